"""Change-history rows carry checksums, on real LMDB files: a byte flipped in `data.mdb` is refused with
the row's revision, never served to a watcher; retention deletes a damaged row only where it lets rows go
by revision, and says so; rows of a raftkv-2 directory (no seal) are read as they are."""

from __future__ import annotations

import os
from pathlib import Path

import lmdb
import msgpack
import pytest

from raftkv.core import ConfState, Entry, EntryType, HardState
from raftkv.storage import LmdbNodeStore, cluster_id_for
from raftkv.storage.commands import Delete, Put, encode
from raftkv.storage.errors import CorruptionError
from raftkv.storage.history import PUT, Retention, row_key

from ..flipped_bytes import flip_value_bytes

CID = cluster_id_for({1: "a:1", 2: "b:2", 3: "c:3"})
CONF = ConfState(frozenset({1, 2, 3}))


def open_store(path: Path) -> LmdbNodeStore:
    return LmdbNodeStore(path, 1, CID, map_size=64 << 20)


def append_apply(s: LmdbNodeStore, cmds: list) -> int:
    first = s.last_index() + 1
    es = [Entry(1, first + i, EntryType.NORMAL, encode(c)) for i, c in enumerate(cmds)]
    s.persist(HardState(1, 1, es[-1].index), es, None, None)
    s.apply(es, None)
    s.flush()
    return es[-1].index


def value() -> bytes:
    return b"history-only-" + os.urandom(12).hex().encode()


def test_a_flipped_byte_in_a_history_row_is_refused_naming_its_revision(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.bootstrap(CONF, {})
    v = value()
    put = append_apply(s, [Put(b"gone", v)])
    append_apply(s, [Delete(b"gone"), Put(b"other", b"fine")])  # the kv record goes: only the history has v
    s.close()
    assert flip_value_bytes(tmp_path / "data.mdb", v) >= 1
    s = open_store(tmp_path)
    with pytest.raises(CorruptionError, match=f"revision {put} fails its checksum"):
        s.history_events(put, put)
    assert s.get(b"other").value == b"fine"
    s.close()


def test_retention_deletes_a_damaged_row_only_by_revision_and_reports_it(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.bootstrap(CONF, {})
    v = value()
    bad = append_apply(s, [Put(b"gone", v)])
    append_apply(s, [Delete(b"gone")])
    for i in range(5):
        append_apply(s, [Put(b"k%d" % i, b"v")])
    s.close()
    assert flip_value_bytes(tmp_path / "data.mdb", v) >= 1
    s = open_store(tmp_path)
    s.history_retention = Retention(revisions=10**6, seconds=0.0)  # every row is old enough, by age
    s.compact(s.applied_index(), CONF)
    assert s.history_floor() <= bad and s.take_damaged_history() == []  # its age unknown: it stays
    s.history_retention = Retention(revisions=3, seconds=3600)
    s.compact(s.applied_index(), CONF)
    # Both rows holding v go: the put's (its record after) and the delete's (its record before).
    assert s.history_floor() > bad + 1 and s.take_damaged_history() == [bad, bad + 1]
    assert s.history_events(s.history_floor(), 10**9)[-1].kv.key == b"k4"
    s.close()


def test_a_row_without_a_seal_from_a_raftkv_2_directory_is_read(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.bootstrap(CONF, {})
    rev = append_apply(s, [Put(b"a", b"1")])
    s.close()
    env = lmdb.open(str(tmp_path), max_dbs=16)
    body = msgpack.packb([b"old", rev, rev, 1], use_bin_type=True)
    with env.begin(write=True, db=env.open_db(b"history")) as txn:
        txn.put(row_key(rev), msgpack.packb([1.0, PUT, b"a", body, None], use_bin_type=True))
    env.close()
    s = open_store(tmp_path)
    [ev] = s.history_events(rev, rev)
    assert ev.kv.value == b"old" and ev.prev is None
    s.close()
