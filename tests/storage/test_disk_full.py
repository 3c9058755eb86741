"""A full LMDB map (the same path as a full disk): the failed Ready is aborted whole, recognised as
NOSPACE (not as a failing disk), and the store goes on from where it was."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import lmdb

from raftkv.core import ConfState, Entry, EntryType, HardState
from raftkv.storage import LmdbNodeStore, cluster_id_for
from raftkv.storage.commands import Put, Range, encode
from raftkv.storage.errors import is_nospace

CID = cluster_id_for({1: "a:1"})
CONF = ConfState(frozenset({1}))


def test_a_full_map_aborts_the_ready_whole_and_is_nospace(tmp_path: Path) -> None:
    s = LmdbNodeStore(tmp_path, 1, CID, map_size=2 << 20)
    s.bootstrap(CONF, {})
    s.save_and_apply(HardState(1, 1, 1), [], None, [Entry(1, 1)], CONF, None)
    failure = None
    for i in range(2, 200):
        ents = [Entry(1, i, EntryType.NORMAL, encode(Put(b"k%03d" % i, os.urandom(30_000))))]
        before = (s.last_index(), s.durable_applied_index(), s.hard_state())
        try:
            if i % 2:  # as the host does it: the previous entry applied into the buffer, then the append
                s.persist(HardState(1, 1, i - 1), ents, None, None)
                s.apply(ents, None)
            else:
                s.save_and_apply(HardState(1, 1, i), ents, None, ents, None, None)
        except lmdb.Error as e:
            failure = e
            break
    assert failure is not None and is_nospace(failure)
    assert (s.last_index(), s.durable_applied_index(), s.hard_state()) == before  # nothing half-written
    # The write-back buffer keeps what was applied (committed entries), to be written by the retry.
    keys = [kv.key for kv in s.range(Range(b"k", b"l")).kvs]
    assert keys == [b"k%03d" % j for j in range(2, s.applied_index() + 1)]
    assert s.applied_index() >= before[1]
    s.close()  # what the write-back buffer held is lost, and re-applied from the log
    s = LmdbNodeStore(tmp_path, 1, CID, map_size=4 << 20)  # more room: the same Ready now goes through
    assert (s.last_index(), s.applied_index()) == (before[0], before[1])
    replay = s.entries(before[1] + 1, s.last_index() + 1)
    s.apply(replay, None)
    s.save_and_apply(HardState(1, 1, i), ents, None, ents, None, None)
    assert s.applied_index() == i and s.get(b"k%03d" % i) is not None
    s.close()


def test_what_counts_as_nospace() -> None:
    assert is_nospace(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert is_nospace(lmdb.DiskError(f"mdb_txn_commit: {os.strerror(errno.ENOSPC)}"))
    assert not is_nospace(lmdb.DiskError(f"mdb_txn_commit: {os.strerror(errno.EIO)}"))
    assert not is_nospace(OSError(errno.EIO, "Input/output error"))
