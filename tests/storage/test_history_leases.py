"""The change history and the lease table on real LMDB files: rows written with the kv rows they describe
(never without them, never twice after a crash and re-apply), retention, `compact`, snapshots."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftkv.core import ConfState, Entry, EntryType, HardState
from raftkv.storage import LmdbNodeStore, cluster_id_for
from raftkv.storage.commands import CompactHistory, Delete, LeaseGrant, LeaseRevoke, Put, Txn, decode, encode
from raftkv.storage.history import DELETE, PUT, HistoryOutOfRange, Retention
from raftkv.storage.leases import LeaseNotFound

CID = cluster_id_for({1: "a:1", 2: "b:2", 3: "c:3"})
CONF = ConfState(frozenset({1, 2, 3}))


def open_store(path: Path) -> LmdbNodeStore:
    return LmdbNodeStore(path, 1, CID, map_size=64 << 20)


def entries(first: int, cmds: list) -> list[Entry]:
    return [Entry(1, first + i, EntryType.NORMAL, encode(c)) for i, c in enumerate(cmds)]


def append_apply(s: LmdbNodeStore, cmds: list, persist: bool = True) -> list:
    """Append and commit `cmds` after the last entry; apply them into the buffer (and persist it)."""
    es = entries(s.last_index() + 1, cmds)
    s.persist(HardState(1, 1, es[-1].index), es, None, None)
    out = s.apply(es, None)
    if persist:
        s.flush()
    return out


def test_put_wire_form_keeps_old_entries_decodable() -> None:
    assert encode(Put(b"k", b"v")) == encode(Put(b"k", b"v", lease=0))
    assert decode(encode(Put(b"k", b"v", lease=7))) == Put(b"k", b"v", False, 7)
    assert decode(encode(LeaseRevoke(5, True))) == LeaseRevoke(5, True)
    assert decode(encode(CompactHistory(9))) == CompactHistory(9)


def test_events_are_written_with_their_kv_rows_and_survive_restart(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.bootstrap(CONF, {})
    first = s.last_index() + 1
    append_apply(s, [Put(b"a", b"1"), Put(b"a", b"2"), Txn((), (Put(b"b", b"x"), Delete(b"a")), ())])
    evs = s.history_events(first, s.applied_index())
    assert [(e.revision, e.kind, e.kv.key) for e in evs] == [
        (first, PUT, b"a"), (first + 1, PUT, b"a"), (first + 2, PUT, b"b"), (first + 2, DELETE, b"a")]
    assert evs[1].prev is not None and evs[1].prev.value == b"1"
    assert evs[3].prev is not None and evs[3].prev.value == b"2"
    s.close()
    s = open_store(tmp_path)
    assert [e.revision for e in s.history_events(first, 10**9)] == [first, first + 1, first + 2, first + 2]
    s.close()


def test_unflushed_events_are_read_and_reapplied_once_after_a_crash(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.bootstrap(CONF, {})
    first = s.last_index() + 1
    append_apply(s, [Put(b"a", b"1")])
    append_apply(s, [Put(b"a", b"2")], persist=False)  # in the write-back buffer only
    assert [e.kv.value for e in s.history_events(first, 10**9)] == [b"1", b"2"]
    s.close()  # a crash: the buffer is lost, the log is not
    s = open_store(tmp_path)
    assert s.durable_applied_index() == first
    s.apply(s.entries(first, s.last_index() + 1), None)  # re-applied from the durable applied index
    s.flush()
    assert [e.kv.value for e in s.history_events(first, 10**9)] == [b"1", b"2"]
    s.close()


def test_compact_moves_the_floor_and_retention_trims(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.bootstrap(CONF, {})
    first = s.last_index() + 1
    append_apply(s, [Put(b"k", b"%d" % i) for i in range(10)])
    assert s.history_floor() <= first
    append_apply(s, [CompactHistory(first + 5)])
    assert s.history_floor() == first + 5
    with pytest.raises(HistoryOutOfRange) as e:
        s.history_events(first + 4, 10**9)
    assert e.value.floor == first + 5
    assert s.history_events(first + 5, 10**9)[0].revision == first + 5
    s.history_retention = Retention(revisions=3, seconds=3600)
    s.compact(s.applied_index(), CONF)
    assert s.history_floor() == s.applied_index() - 2
    s.close()
    s = open_store(tmp_path)  # the floor is durable
    assert s.history_floor() == s.applied_index() - 2
    s.close()


def test_retention_by_bytes_keeps_the_newest_whole_revisions(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.bootstrap(CONF, {})
    first = s.last_index() + 1
    append_apply(s, [Put(b"big%d" % i, b"x" * 20_000) for i in range(40)])  # ~800 kB of events
    append_apply(s, [Txn((), (Put(b"t1", b"y" * 20_000), Put(b"t2", b"y" * 20_000)), ())])
    s.history_retention = Retention(revisions=10**6, seconds=3600, max_bytes=300_000)
    s.compact(s.applied_index(), CONF)
    floor = s.history_floor()
    assert first + 20 < floor <= s.applied_index()
    kept = s.history_events(floor, 10**9)
    assert kept[0].revision == floor and kept[-1].revision == s.applied_index()
    assert [e.kv.key for e in kept[-2:]] == [b"t1", b"t2"]  # the newest revision whole
    with pytest.raises(HistoryOutOfRange):
        s.history_events(floor - 1, 10**9)
    s.close()


def test_leases_attach_revoke_and_reload(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.bootstrap(CONF, {})
    grant = append_apply(s, [LeaseGrant(0, 10)])[0]
    lid = grant.lease_id
    assert lid == s.applied_index()
    res = append_apply(s, [Put(b"x", b"1", lease=lid), Put(b"y", b"1", lease=lid), Put(b"z", b"1", lease=999)])
    assert isinstance(res[2], LeaseNotFound)
    assert s.leases.get(lid).keys == {b"x", b"y"}
    append_apply(s, [Put(b"y", b"2")])  # put without the lease: detached
    s.close()
    s = open_store(tmp_path)
    assert s.leases.get(lid).keys == {b"x"} and s.leases.get(lid).ttl == 10
    rev = append_apply(s, [LeaseRevoke(lid, expired=True)])[0]
    assert rev.deleted == 1 and s.get(b"x") is None and s.get(b"y") is not None
    assert [e.kind for e in s.history_events(rev.revision, rev.revision)] == [DELETE]
    assert isinstance(append_apply(s, [LeaseRevoke(lid)])[0], LeaseNotFound)
    s.close()
    s = open_store(tmp_path)
    assert s.leases.get(lid) is None
    s.close()
