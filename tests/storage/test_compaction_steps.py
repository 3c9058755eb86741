"""Compaction in bounded steps, on real LMDB files. Recording the snapshot point is one small transaction;
deleting the log's compacted prefix and the history that retention lets go follows in steps of at most
about `max_rows` rows, each its own transaction. Between steps the store takes writes, and a crash
between steps leaves a store that opens whole. Without this, one compaction after a million-key load
held the store's write lock for 0.6 s, longer than an election timeout."""

from __future__ import annotations

from pathlib import Path

import lmdb
import pytest

from raftkv.core import ConfState, Entry, EntryType, HardState
from raftkv.storage import LmdbNodeStore, cluster_id_for
from raftkv.storage.commands import Put, Txn, encode
from raftkv.storage.history import HistoryOutOfRange, Retention

CID = cluster_id_for({1: "a:1", 2: "b:2", 3: "c:3"})
CONF = ConfState(frozenset({1, 2, 3}))
STEP = 100


def open_store(path: Path) -> LmdbNodeStore:
    return LmdbNodeStore(path, 1, CID, map_size=256 << 20)


def append_apply(s: LmdbNodeStore, cmds: list) -> None:
    first = s.last_index() + 1
    es = [Entry(1, first + i, EntryType.NORMAL, encode(c)) for i, c in enumerate(cmds)]
    s.persist(HardState(1, 1, es[-1].index), es, None, None)
    s.apply(es, None)
    s.flush()


def rows(s: LmdbNodeStore, db: lmdb._Database) -> list[bytes]:
    with s.env.begin(db=db) as txn:
        return [bytes(k) for k, _ in txn.cursor()]


def loaded(path: Path) -> tuple[LmdbNodeStore, int]:
    """A store whose log holds 1,000 single puts and 10 transactions of 100 puts (2,000 history rows)."""
    s = open_store(path)
    s.bootstrap(CONF, {})
    first = s.last_index() + 1
    append_apply(s, [Put(b"k%04d" % i, b"v") for i in range(1000)])
    append_apply(s, [Txn((), tuple(Put(b"t%d-%d" % (t, i), b"v") for i in range(100)), ()) for t in range(10)])
    return s, first


def test_compaction_deletes_in_bounded_steps_and_takes_writes_between_them(tmp_path: Path) -> None:
    s, first = loaded(tmp_path)
    s.history_retention = Retention(revisions=5, seconds=3600)
    applied = s.applied_index()
    log_before, hist_before = len(rows(s, s.log_db)), len(rows(s, s.history_db))
    point = s.start_compaction(applied - 3, CONF)
    assert point == applied
    # The point is recorded at once: the prefix reads as compacted before a row of it is deleted.
    assert s.first_index() == applied - 2 and s.compacted_index() == applied - 3
    assert len(rows(s, s.log_db)) == log_before
    steps, written = 0, 0
    while True:
        log_rows, hist_rows = len(rows(s, s.log_db)), len(rows(s, s.history_db))
        more = s.compaction_step(STEP)
        steps += 1
        gone = (log_rows - len(rows(s, s.log_db))) + (hist_rows - len(rows(s, s.history_db)))
        # At most one step's worth, plus the rest of a revision begun (a transaction's 100 rows).
        assert gone <= STEP + 100
        append_apply(s, [Put(b"between", b"%d" % steps)])  # the store takes a write between steps
        written += 1
        if not more:
            break
        assert steps < 1000
    assert steps >= (log_before + hist_before - 20) // (STEP + 100)
    # Everything up to the compaction point is gone, and nothing after it.
    assert [int.from_bytes(k, "big") for k in rows(s, s.log_db)] == list(range(applied - 2, s.last_index() + 1))
    assert s.entries(applied - 2, s.last_index() + 1)[-1].index == applied + written
    assert s.history_floor() == applied - 4
    assert s.history_events(applied - 4, 10**9)[0].revision == applied - 4
    with pytest.raises(HistoryOutOfRange):
        s.history_events(first, 10**9)
    assert s.get(b"k0999") is not None and s.get(b"between") is not None
    s.close()


def test_a_crash_between_compaction_steps_leaves_a_store_that_opens_whole(tmp_path: Path) -> None:
    s, first = loaded(tmp_path)
    s.history_retention = Retention(revisions=5, seconds=3600)
    applied = s.applied_index()
    last = s.last_index()
    s.start_compaction(applied, CONF)  # the whole log: no entry after the point
    assert s.compaction_step(STEP)
    floor = s.history_floor()
    s.close()  # a crash: the remaining steps never ran
    s = open_store(tmp_path)
    # The log's compacted prefix is partly still on disk, but the store reads as compacted to the point:
    # its last index is the point, not the newest row left over below it.
    assert (s.first_index(), s.last_index(), s.compacted_index()) == (applied + 1, last, applied)
    assert s.term(applied) == 1
    assert s.history_floor() == floor
    append_apply(s, [Put(b"after", b"1")])
    assert s.last_index() == last + 1
    # The next compaction deletes what the interrupted one left.
    s.history_retention = Retention(revisions=5, seconds=3600)
    s.compact(s.applied_index() - 1, CONF)
    assert [int.from_bytes(k, "big") for k in rows(s, s.log_db)] == [last + 1]
    floor = s.history_floor()
    assert floor == s.applied_index() - 4
    revisions = {int.from_bytes(k[:8], "big") for k in rows(s, s.history_db)}
    assert revisions == set(range(floor, s.applied_index() + 1))
    s.close()


def test_a_crash_after_recording_the_point_leaves_no_entry_readable_below_it(tmp_path: Path) -> None:
    s, _ = loaded(tmp_path)
    applied = s.applied_index()
    s.start_compaction(applied, CONF)
    s.close()  # before any step: every row of the log is still on disk
    s = open_store(tmp_path)
    assert (s.first_index(), s.last_index()) == (applied + 1, applied)
    assert s.entries(applied + 1, applied + 1) == []
    s.close()
