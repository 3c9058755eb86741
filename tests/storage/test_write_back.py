"""The write-back buffer across crashes, on real LMDB files (DESIGN.md §4).

The host's cycle is run step by step against the store -- committed entries applied into the buffer, the
next append persisted (carrying the buffer), a commit index noted, the buffer flushed alone, the log
compacted -- and stopped at every point of it, including inside a transaction that never commits: the
environment is closed there without a flush (what kill -9 leaves) and opened again. Each time:

- LMDB's applied index is exactly what its data shows (every entry up to it there, none after it);
- after re-applying the log from that index, as the core re-delivers it (applied .. commit), every entry
  has been applied exactly once: each entry's own key has version 1, and a counter every entry puts to
  (inside a Txn) has a version equal to the number of entries applied;
- nothing the store needs for that replay has been compacted away, although compaction is asked for
  through the buffer's applied index.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from raftkv.core import ConfState, Entry, EntryType, HardState, Snapshot
from raftkv.storage import LmdbNodeStore, cluster_id_for
from raftkv.storage.commands import Put, Range, Txn, encode, prefix_end

CID = cluster_id_for({1: "a:1"})
CONF = ConfState(frozenset({1}))
TERM = 2
PER_READY = 3  # entries per Ready
CYCLES = 4
POINTS = ["applied", "in-persist", "persisted", "commit-noted", "applied-next", "compacted", "in-flush", "flushed"]
"""The points of one cycle at which the node is stopped (see `cycle`)."""


class Crash(Exception):
    """The process dies here."""


def open_store(path: Path) -> LmdbNodeStore:
    return LmdbNodeStore(path, 1, CID, map_size=64 << 20)


def increment(index: int) -> Entry:
    """Entry `index`: its own key, and one more put to the counter (a Txn)."""
    cmd = Txn((), (Put(b"e%05d" % index, b"%d" % index), Put(b"counter", b"%d" % index)), ())
    return Entry(TERM, index, EntryType.NORMAL, encode(cmd))


def entries_of_ready(n: int) -> list[Entry]:
    first = 4 + (n - 1) * PER_READY  # after the bootstrap entries 1..3
    return [increment(i) for i in range(first, first + PER_READY)]


def new_store(path: Path) -> LmdbNodeStore:
    s = open_store(path)
    s.bootstrap(CONF, {})  # entry 1
    boot = s.entries(1, 2)
    s.save_and_apply(HardState(TERM, 1, 3), [Entry(TERM, 2), Entry(TERM, 3)], None, boot + [Entry(TERM, 2), Entry(TERM, 3)],
                     CONF, None)
    return s


def check_durable(s: LmdbNodeStore) -> None:
    """What LMDB alone holds (the buffer is empty after a reopen): data and applied index agree."""
    applied = s.applied_index()
    assert applied == s.durable_applied_index()
    keys = [kv.key for kv in s.range(Range(b"e", prefix_end(b"e"))).kvs]
    assert keys == [b"e%05d" % i for i in range(4, applied + 1)], f"the data does not match applied {applied}"
    counter = s.get(b"counter")
    if applied >= 4:
        assert counter is not None and counter.mod_revision == applied and counter.version == applied - 3
    else:
        assert counter is None


def replay(s: LmdbNodeStore) -> None:
    """What a restarted node does (RaftNode's start + the host): re-apply from the applied index LMDB
    holds (or the compaction point, if above it) through the commit index of its hard state."""
    hs = s.hard_state()
    commit = min(hs.commit, s.last_index())
    assert s.first_index() - 1 <= s.applied_index(), "entries above the applied index were compacted away"
    applied = max(s.applied_index(), s.first_index() - 1)
    if applied < commit:
        s.apply(s.entries(applied + 1, commit + 1), None)


def check_exactly_once(s: LmdbNodeStore) -> None:
    applied = s.applied_index()
    for i in range(4, applied + 1):
        kv = s.get(b"e%05d" % i)
        assert kv is not None and kv.version == 1 and kv.create_revision == i, f"entry {i} applied twice"
    counter = s.get(b"counter")
    if applied < 4:
        assert counter is None
        return
    assert counter is not None and counter.version == applied - 3, "an entry was applied twice or not at all"
    assert counter.value == b"%d" % applied


def cycle(s: LmdbNodeStore, n: int, stop: Callable[[str], None], keep: int) -> None:
    """Ready n of the host: the previous Ready's entries, committed now, applied into the buffer; Ready n's
    entries appended in one synced transaction with the hard state and the buffer; then a Ready that only
    commits them (no fsync); a compaction keeping `keep` entries; the timed flush."""
    prev = entries_of_ready(n - 1) if n > 1 else []
    ents = entries_of_ready(n)
    if prev:
        s.apply(prev, None)
    stop("applied")
    s.persist(HardState(TERM, 1, prev[-1].index if prev else 3), ents, None, None)
    stop("persisted")
    s.note_hard_state(HardState(TERM, 1, ents[-1].index))
    stop("commit-noted")
    s.apply(ents, None)
    stop("applied-next")
    # Asked to compact through what the buffer has applied: the store keeps what LMDB has not.
    s.compact(max(0, s.applied_index() - keep), CONF)
    stop("compacted")
    s.flush()
    stop("flushed")


def crash_inside_commits(s: LmdbNodeStore, stop: Callable[[str], None]) -> None:
    """Make the store's synced transactions die after writing everything, before they commit."""
    original = s._write_buffer

    def write_buffer(txn, applied, conf):  # noqa: ANN001, ANN202
        original(txn, applied, conf)
        stop("in-flush" if s._flushing else "in-persist")

    s._write_buffer = write_buffer  # type: ignore[method-assign]
    original_flush = s.flush

    def flush() -> None:
        s._flushing = True
        try:
            original_flush()
        finally:
            s._flushing = False

    s._flushing = False  # type: ignore[attr-defined]
    s.flush = flush  # type: ignore[method-assign]


@pytest.mark.parametrize("keep", [0, 2])
@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("at_cycle", range(1, CYCLES + 1))
def test_a_crash_at_any_point_of_the_write_back_loses_nothing_and_applies_nothing_twice(
        tmp_path: Path, at_cycle: int, point: str, keep: int) -> None:
    s = new_store(tmp_path)

    def stop(where: str) -> None:
        if (n, where) == (at_cycle, point):
            raise Crash(where)

    crash_inside_commits(s, stop)
    n = 0
    with pytest.raises(Crash):
        for n in range(1, CYCLES + 1):
            cycle(s, n, stop, keep)
    s.close()  # no flush: what the buffer held is gone

    s = open_store(tmp_path)
    check_durable(s)
    # The log holds everything the buffer lost, and the hard state's commit index covers it.
    replay(s)
    check_exactly_once(s)
    # The node goes on (the crashed Ready is delivered again) to the end, and stops dead again.
    crash_inside_commits(s, lambda where: None)
    for m in range(at_cycle, CYCLES + 1):
        cycle(s, m, lambda where: None, keep)
    check_exactly_once(s)
    s.close()
    s = open_store(tmp_path)
    check_durable(s)
    replay(s)
    check_exactly_once(s)
    assert s.applied_index() == entries_of_ready(CYCLES)[-1].index
    s.close()


def test_a_read_during_a_snapshot_install_sees_the_old_state_or_the_new_never_a_mix(tmp_path: Path) -> None:
    """An install replaces LMDB's `kv` and empties the buffer; a read on another thread that overlaps
    the moment between (committed, buffer not yet emptied) must not see the old buffer over the new
    data. The install is held right there."""
    src = new_store(tmp_path / "src")
    ents = [Entry(TERM, 4, EntryType.NORMAL, encode(Put(b"b", b"9"))),
            Entry(TERM, 5, EntryType.NORMAL, encode(Put(b"d", b"9")))]
    src.save_and_apply(HardState(TERM, 1, 5), ents, None, ents, None, None)
    reader = src.open_snapshot_reader(300)  # streamed and staged, as from a leader
    pieces = []
    while (piece := reader.next_piece()) is not None:
        pieces.append((piece.data, piece.crc))
    src.close()
    s = new_store(tmp_path / "dst")
    s.save_and_apply(None, [], None, [Entry(TERM, 4, EntryType.NORMAL, encode(Put(b"a", b"1")))], None, None)
    s.apply([Entry(TERM, 5, EntryType.NORMAL, encode(Put(b"c", b"2")))], None)  # in the buffer only
    stage = s.stage_snapshot(reader.meta)
    for data, crc in pieces:
        stage.add(data, crc)
    snap = Snapshot(reader.meta, stage.finish(reader.count, reader.digest()))
    reader.close()
    everything = Range(b"\0", b"\0")

    def state() -> dict[bytes, bytes]:
        return {kv.key: kv.value for kv in s.range(everything).kvs}

    assert state() == {b"a": b"1", b"c": b"2"}
    committed, release = threading.Event(), threading.Event()
    original = s._committed

    def held(*args):  # noqa: ANN002, ANN202
        committed.set()
        assert release.wait(10)
        original(*args)

    s._committed = held  # type: ignore[method-assign]
    install = threading.Thread(target=s.persist, args=(HardState(TERM, 0, snap.meta.index), [], snap, None))
    install.start()
    assert committed.wait(10)
    seen: list[dict[bytes, bytes]] = []
    reader = threading.Thread(target=lambda: seen.append(state()))
    reader.start()
    reader.join(0.3)
    release.set()
    install.join(10)
    reader.join(10)
    assert seen == [{b"b": b"9", b"d": b"9"}], f"a read saw {seen}"
    s.close()
