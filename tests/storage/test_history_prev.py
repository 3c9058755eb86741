"""An event's record before, on real LMDB files. A long one is not copied into the event's row but named by
the revision of the key's previous event, whose row holds it already (history.py): each 64 KiB put then
writes its value once into the history, not twice. Retention keeps a row that a later event still names,
below the floor, and lets it go with that event; a change still in the write-back buffer whose previous
row goes meanwhile gets its record before copied in; a row naming a missing record is refused as
damaged data."""

from __future__ import annotations

from pathlib import Path

import lmdb
import pytest

from raftkv.core import ConfState, Entry, EntryType, HardState
from raftkv.storage import LmdbNodeStore, cluster_id_for
from raftkv.storage.commands import CompactHistory, Delete, Put, encode
from raftkv.storage.errors import CorruptionError, ForeignDataError
from raftkv.storage.history import PREV_INLINE_BYTES, HistoryOutOfRange, Retention
from raftkv.storage.node_store import FORMAT

CID = cluster_id_for({1: "a:1", 2: "b:2", 3: "c:3"})
CONF = ConfState(frozenset({1, 2, 3}))
BIG = 4 * PREV_INLINE_BYTES


def big(tag: int) -> bytes:
    return (b"%06d" % tag) * (BIG // 6)


def open_store(path: Path) -> LmdbNodeStore:
    return LmdbNodeStore(path, 1, CID, map_size=256 << 20)


def append_apply(s: LmdbNodeStore, cmds: list, flush: bool = True) -> int:
    """Append, commit and apply `cmds` (and write the buffer, unless `flush` is False); the last index."""
    first = s.last_index() + 1
    es = [Entry(1, first + i, EntryType.NORMAL, encode(c)) for i, c in enumerate(cmds)]
    s.persist(HardState(1, 1, es[-1].index), es, None, None)
    s.apply(es, None)
    if flush:
        s.flush()
    return es[-1].index


def history_rows(s: LmdbNodeStore) -> list[tuple[int, int]]:
    """(revision, value bytes) of every row in the history sub-database, kept rows included."""
    with s.env.begin(db=s.history_db) as txn:
        return [(int.from_bytes(bytes(k[:8]), "big"), len(v)) for k, v in txn.cursor()]


def fresh(path: Path) -> LmdbNodeStore:
    s = open_store(path)
    s.bootstrap(CONF, {})
    return s


def test_a_long_record_before_is_written_once(tmp_path: Path) -> None:
    s = fresh(tmp_path)
    r1 = append_apply(s, [Put(b"a", big(1))])
    r2 = append_apply(s, [Put(b"a", big(2))])
    r3 = append_apply(s, [Delete(b"a")])
    sizes = dict(history_rows(s))
    assert sizes[r1] > BIG and sizes[r2] < BIG + 100 and sizes[r3] < 100  # the record before: by revision
    for store in (s, None):
        if store is None:
            s.close()
            store = s = open_store(tmp_path)
        evs = store.history_events(r1, r3)
        assert [e.revision for e in evs] == [r1, r2, r3]
        assert evs[0].prev is None
        assert evs[1].prev is not None and evs[1].prev.value == big(1) and evs[1].prev.mod_revision == r1
        assert evs[2].prev is not None and evs[2].prev.value == big(2)
    short = append_apply(s, [Put(b"s", b"x" * PREV_INLINE_BYTES), Put(b"s", b"y")])
    assert s.history_events(short, short)[0].prev.value == b"x" * PREV_INLINE_BYTES  # short: copied in
    s.close()


def test_retention_keeps_a_row_that_a_later_event_names_and_lets_it_go_with_that_event(tmp_path: Path) -> None:
    s = fresh(tmp_path)
    r1 = append_apply(s, [Put(b"a", big(1))])
    append_apply(s, [Put(b"f%d" % i, b"v") for i in range(5)])
    r2 = append_apply(s, [Put(b"a", big(2))])
    append_apply(s, [Put(b"g%d" % i, b"v") for i in range(5)])
    s.history_retention = Retention(revisions=s.applied_index() - r2 + 1, seconds=3600)
    s.compact(s.applied_index(), CONF)
    assert s.history_floor() == r2
    assert r1 in dict(history_rows(s))  # kept, below the floor: the event at r2 names it
    with pytest.raises(HistoryOutOfRange):
        s.history_events(r1, r1)
    s.close()
    s = open_store(tmp_path)
    ev = s.history_events(r2, r2)[0]
    assert ev.prev is not None and ev.prev.value == big(1)
    append_apply(s, [Put(b"h%d" % i, b"v") for i in range(5)])
    s.history_retention = Retention(revisions=3, seconds=3600)
    s.compact(s.applied_index(), CONF)
    floor = s.history_floor()
    assert floor > r2
    assert [rev for rev, _ in history_rows(s) if rev < floor] == []  # both gone: `a` changed no more
    s.close()


def test_a_hot_key_keeps_at_most_one_row_below_the_floor(tmp_path: Path) -> None:
    s = fresh(tmp_path)
    s.history_retention = Retention(revisions=4, seconds=3600)
    written: dict[int, bytes] = {}  # revision -> the value `hot` got there
    for round_ in range(8):
        for i in range(6):
            value = big(round_ * 10 + i)
            written[append_apply(s, [Put(b"hot", value)])] = value
        s.compact(s.applied_index(), CONF)
        floor = s.history_floor()
        below = [rev for rev, _ in history_rows(s) if rev < floor]
        assert len(below) <= 1, below
        evs = s.history_events(floor, 10**9)
        assert [e.kv.value for e in evs] == [written[e.revision] for e in evs] and len(evs) == 4
        for e in evs:
            assert e.prev is not None and e.prev.value == written[e.revision - 1]
    s.close()


def test_a_buffered_change_whose_previous_row_goes_meanwhile_copies_its_record_before(tmp_path: Path) -> None:
    s = fresh(tmp_path)
    r1 = append_apply(s, [Put(b"a", big(1))])
    append_apply(s, [Put(b"f%d" % i, b"v") for i in range(5)])
    r2 = append_apply(s, [Put(b"a", big(2))], flush=False)  # applied, in the write-back buffer only
    s.history_retention = Retention(revisions=1, seconds=3600)
    s.compact(s.applied_index(), CONF)  # LMDB holds no later change of `a`: its row at r1 goes
    assert s.history_floor() > r1 and r1 not in dict(history_rows(s))
    s.flush()
    assert dict(history_rows(s))[r2] > 2 * BIG  # written with its record before in it
    s.close()
    s = open_store(tmp_path)
    ev = s.history_events(r2, r2)[0]
    assert ev.prev is not None and ev.prev.value == big(1)
    s.close()


def test_a_compacted_floor_and_a_long_copied_record_before(tmp_path: Path) -> None:
    """`kv compact` moves the floor past a row before its key's next change is written: that change
    copies its record before in, and the row below the floor still goes with it."""
    s = fresh(tmp_path)
    r1 = append_apply(s, [Put(b"a", big(1))])
    append_apply(s, [Put(b"f%d" % i, b"v") for i in range(3)])
    append_apply(s, [CompactHistory(r1 + 2)])
    r2 = append_apply(s, [Put(b"a", big(2))])
    assert dict(history_rows(s))[r2] > 2 * BIG
    s.history_retention = Retention(revisions=10**6, seconds=3600)
    s.compact(s.applied_index(), CONF)
    assert s.history_events(r2, r2)[0].prev.value == big(1)
    append_apply(s, [Put(b"g%d" % i, b"v") for i in range(3)])
    s.history_retention = Retention(revisions=2, seconds=3600)
    s.compact(s.applied_index(), CONF)
    assert [rev for rev, _ in history_rows(s) if rev < s.history_floor()] == []
    s.close()


def test_a_row_naming_a_missing_record_is_refused_as_damaged(tmp_path: Path) -> None:
    s = fresh(tmp_path)
    r1 = append_apply(s, [Put(b"a", big(1))])
    r2 = append_apply(s, [Put(b"a", big(2))])
    with s.env.begin(write=True, db=s.history_db) as txn:
        assert txn.delete(r1.to_bytes(8, "big") + bytes(4))
    with pytest.raises(CorruptionError, match=f"revision {r2}.*revision {r1}"):
        s.history_events(r2, r2)
    s.close()


def test_a_raftkv_2_directory_opens_and_is_marked_as_this_format(tmp_path: Path) -> None:
    s = fresh(tmp_path)
    r1 = append_apply(s, [Put(b"a", b"1"), Put(b"a", b"2")])
    s.close()
    env = lmdb.open(str(tmp_path), max_dbs=16)
    with env.begin(write=True, db=env.open_db(b"meta")) as txn:
        txn.put(b"format", b"raftkv-2")
    env.close()
    s = open_store(tmp_path)
    assert s.history_events(r1, r1)[0].prev.value == b"1"
    s.close()
    env = lmdb.open(str(tmp_path), max_dbs=16)
    with env.begin(db=env.open_db(b"meta")) as txn:
        assert bytes(txn.get(b"format")) == FORMAT == b"raftkv-3"
    env.close()
    env = lmdb.open(str(tmp_path), max_dbs=16)
    with env.begin(write=True, db=env.open_db(b"meta")) as txn:
        txn.put(b"format", b"raftkv-9")
    env.close()
    with pytest.raises(ForeignDataError, match="unknown data format"):
        open_store(tmp_path)
