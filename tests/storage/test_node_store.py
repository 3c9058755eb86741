"""LmdbNodeStore on real LMDB files: the log, checksums, refusal of foreign data, atomic apply across
kill -9 and the state machine's semantics (snapshots: test_snapshots.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lmdb
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftkv.core import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    MemoryStorage,
    UnavailableError,
)
from raftkv.storage import (
    CorruptionError,
    ForeignDataError,
    LmdbNodeStore,
    cluster_id_for,
    commands,
    state_machine,
)
from raftkv.storage.commands import Compare, Delete, Put, Range, Txn, encode, prefix_end
from raftkv.storage.state_machine import TxnView

CID = cluster_id_for({1: "a:1", 2: "b:2", 3: "c:3"})
CONF = ConfState(frozenset({1, 2, 3}))


def open_store(path: Path, node_id: int = 1, cid: bytes = CID) -> LmdbNodeStore:
    return LmdbNodeStore(path, node_id, cid, map_size=64 << 20)


def cmd_entries(first: int, term: int, cmds: list) -> list[Entry]:
    return [Entry(term, first + i, EntryType.NORMAL, encode(c)) for i, c in enumerate(cmds)]


def test_log_append_truncate_reopen(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.bootstrap(CONF, {})
    assert (s.first_index(), s.last_index()) == (1, 3)
    assert s.hard_state() == HardState(1, 0, 3)
    s.save_and_apply(HardState(2, 1, 3), [Entry(2, 4, data=b"a"), Entry(2, 5, data=b"b"), Entry(2, 6, data=b"c")],
                     None, [], None, None)
    # A new leader overwrites from index 5.
    s.save_and_apply(None, [Entry(3, 5, data=b"x")], None, [], None, None)
    assert s.last_index() == 5 and s.term(5) == 3 and s.term(4) == 2
    assert [e.data for e in s.entries(4, 6)] == [b"a", b"x"]
    with pytest.raises(UnavailableError):
        s.entries(4, 7)
    s.close()
    s = open_store(tmp_path)
    assert s.last_index() == 5 and s.hard_state() == HardState(2, 1, 3)
    assert [e.data for e in s.entries(5, 6)] == [b"x"]
    assert [e.index for e in s.entries(1, 6, max_bytes=1)] == [1]  # at least one entry despite the limit
    s.close()


def _corrupt_entry(path: Path, index: int) -> None:
    env = lmdb.open(str(path), max_dbs=8, map_size=64 << 20)
    db = env.open_db(b"log")
    with env.begin(write=True, db=db) as txn:
        key = index.to_bytes(8, "big")
        term, etype, data, crc = msgpack.unpackb(txn.get(key))
        txn.put(key, msgpack.packb([term, etype, data[:-1] + bytes([data[-1] ^ 0x01]), crc], use_bin_type=True))
    env.close()


def test_flipped_bit_is_refused_on_read_and_on_open(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.bootstrap(CONF, {})
    s.save_and_apply(HardState(2, 1, 3), [Entry(2, 4, data=b"payload")], None, [], None, None)
    s.close()
    _corrupt_entry(tmp_path, 4)
    with pytest.raises(CorruptionError) as e:
        open_store(tmp_path)
    msg = str(e.value)
    assert "data.mdb" in msg and "entry 4" in msg and "checksum" in msg and "\n" not in msg


def test_foreign_node_or_cluster_is_refused(tmp_path: Path) -> None:
    open_store(tmp_path).close()
    with pytest.raises(ForeignDataError, match="node 1, not node 2"):
        open_store(tmp_path, node_id=2)
    with pytest.raises(ForeignDataError, match="cluster"):
        open_store(tmp_path, cid=cluster_id_for({1: "other:1"}))
    open_store(tmp_path).close()  # the rightful owner still opens it


def test_state_machine_semantics(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.bootstrap(CONF, {})
    ents = cmd_entries(4, 2, [Put(b"a", b"1"), Put(b"a", b"2", prev_kv=True), Put(b"ab", b"3"), Put(b"b", b"4"),
                              Delete(b"b", prev_kv=True)])
    res = s.save_and_apply(HardState(2, 1, 8), ents, None, [Entry(1, i) for i in (1, 2, 3)] + ents, CONF, None)
    assert res[2] is None  # conf/bootstrap entries have no result
    assert res[3].prev is None and res[4].prev.value == b"1" and res[4].revision == 5
    assert res[7].deleted == 1 and res[7].prev[0].value == b"4"
    a = s.get(b"a")
    assert (a.value, a.create_revision, a.mod_revision, a.version) == (b"2", 4, 5, 2)
    assert s.get(b"b") is None
    r = s.range(Range(b"a", prefix_end(b"a")))
    assert [kv.key for kv in r.kvs] == [b"a", b"ab"] and r.count == 2 and not r.more
    r = s.range(Range(b"a", b"\0", limit=1, keys_only=True))
    assert [(kv.key, kv.value) for kv in r.kvs] == [(b"a", b"")] and r.more and r.count == 2
    assert s.range(Range(b"", b"\0", count_only=True)).count == 2
    assert s.applied_index() == 8


def test_txn_compare_and_swap(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.bootstrap(CONF, {})
    s.save_and_apply(None, [], None, [Entry(1, i) for i in (1, 2, 3)], CONF, None)

    def cas(index: int, old: bytes, new: bytes):  # noqa: ANN202
        t = Txn((Compare(b"bal", "value", "=", old),), (Put(b"bal", new),), (Range(b"bal"),))
        e = cmd_entries(index, 2, [t])
        return s.save_and_apply(None, e, None, e, None, None)[0]

    first = cmd_entries(4, 2, [Put(b"bal", b"1000")])
    s.save_and_apply(None, first, None, first, None, None)
    ok = cas(5, b"1000", b"900")
    assert ok.succeeded and s.get(b"bal").value == b"900"
    stale = cas(6, b"1000", b"950")
    assert not stale.succeeded and stale.results[0].kvs[0].value == b"900" and s.get(b"bal").value == b"900"
    absent = Txn((Compare(b"nokey", "exists", "=", False), Compare(b"nokey", "version", "=", 0)),
                 (Put(b"nokey", b"v"),), ())
    e = cmd_entries(7, 2, [absent])
    assert s.save_and_apply(None, e, None, e, None, None)[0].succeeded
    bad = [Entry(2, 8, EntryType.NORMAL, b"\xc1garbage")]
    res = s.save_and_apply(None, bad, None, bad, None, None)
    assert isinstance(res[0], ValueError) and s.applied_index() == 8  # a bad command fails alone


APPLY_LOOP = textwrap.dedent("""
    import sys
    from raftkv.core import ConfState, Entry, EntryType
    from raftkv.storage import LmdbNodeStore, cluster_id_for
    from raftkv.storage.commands import Put, encode
    s = LmdbNodeStore(sys.argv[1], 1, cluster_id_for({1: "a:1"}), map_size=256 << 20)
    s.bootstrap(ConfState(frozenset({1})), {})
    s.save_and_apply(None, [], None, [Entry(1, 1)], ConfState(frozenset({1})), None)
    i = 2
    print("ready", flush=True)
    while True:
        batch = [Entry(1, i + j, EntryType.NORMAL, encode(Put(b"k%08d" % (i + j), b"x" * 100))) for j in range(50)]
        if sys.argv[2] == "buffered":  # as the host: each append's commit takes the previous batch's apply
            s.persist(None, batch, None, None)
            s.apply(batch, None)
        else:
            s.save_and_apply(None, batch, None, batch, None, None)
        i += 50
""")


@pytest.mark.parametrize("path", ["save_and_apply", "buffered"])
def test_applied_index_matches_data_after_kill_9(tmp_path: Path, path: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", APPLY_LOOP, str(tmp_path), path], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(0.7)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    s = LmdbNodeStore(tmp_path, 1, cluster_id_for({1: "a:1"}), map_size=256 << 20)
    applied = s.applied_index()
    assert applied > 50
    keys = [kv.key for kv in s.range(Range(b"k", prefix_end(b"k"))).kvs]
    # Every applied entry's key is there, and nothing beyond the applied index.
    assert keys == [b"k%08d" % i for i in range(2, applied + 1)]
    assert s.last_index() >= applied


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["append", "truncate", "compact"]), st.integers(0, 8), st.integers(1, 5)),
                min_size=1, max_size=25))
def test_behaves_like_memory_storage(tmp_path_factory: pytest.TempPathFactory, ops: list) -> None:
    path = tmp_path_factory.mktemp("prop")
    lm = open_store(path)
    mem = MemoryStorage()
    term = 1
    for op, a, b in ops:
        last = mem.last_index()
        if op == "append":
            ents = [Entry(term, last + 1 + i, data=b"%d" % (last + 1 + i)) for i in range(b)]
        elif op == "truncate" and last >= mem.first_index():
            term += 1
            start = max(mem.first_index(), last - a)
            ents = [Entry(term, start + i, data=b"t%d" % i) for i in range(b)]
        elif op == "compact" and last >= mem.first_index():
            to = max(mem.first_index(), last - a)
            mem.create_snapshot(to, ConfState(), b"")
            mem.compact(to)
            lm._applied = lm._durable_applied = to  # the state machine is empty; compaction needs the log
            lm.compact(to, ConfState())
            continue
        else:
            continue
        mem.append(ents)
        lm.save_and_apply(None, ents, None, [], None, None)
        assert (lm.first_index(), lm.last_index()) == (mem.first_index(), mem.last_index())
    lo, hi = mem.first_index(), mem.last_index() + 1
    assert [(e.index, e.term, e.data) for e in lm.entries(lo, hi)] == [(e.index, e.term, e.data)
                                                                        for e in mem.entries(lo, hi)]
    assert lm.term(lo - 1) == mem.term(lo - 1)
    lm.close()


# Long keys (LMDB holds at most 511 bytes) share buckets; an empty key cannot be stored and fails alone.
KEYS = [b"a", b"ab", b"b", b"c", b"L" * 479, b"L" * 480, b"L" * 480 + b"a", b"L" * 480 + b"b", b"L" * 600, b""]
single_key_op = st.one_of(
    st.builds(Put, st.sampled_from(KEYS), st.binary(max_size=4), st.booleans()),
    st.builds(Delete, st.sampled_from(KEYS), st.just(b""), st.booleans()),
)
compare = st.builds(Compare, st.sampled_from(KEYS), st.sampled_from(["value", "version", "mod", "exists"]),
                    st.sampled_from(["=", "!=", "<", ">"]), st.integers(0, 3))
command = st.one_of(
    single_key_op,
    st.builds(Txn, st.lists(compare, max_size=2).map(tuple), st.lists(single_key_op, max_size=3).map(tuple),
              st.lists(st.one_of(single_key_op, st.builds(Range, st.sampled_from(KEYS))), max_size=2).map(tuple)),
    # Key ranges: scans merge the buffer with LMDB.
    st.builds(Delete, st.just(b"a"), st.just(prefix_end(b"a")), st.booleans()),
    st.builds(Txn, st.just(()), st.just((Range(b"", b"\0"),)), st.just(())),
)


def _fix_compare(c: Compare) -> Compare:
    # Value compares take bytes, the others integers, as the API validates them.
    if c.target == "value":
        return Compare(c.key, c.target, c.result, b"%d" % c.operand)
    if c.target == "exists":
        return Compare(c.key, c.target, "=" if c.result == "=" else "!=", bool(c.operand % 2))
    return c


def _fixed(cmd):  # noqa: ANN001, ANN202
    if isinstance(cmd, Txn):
        return Txn(tuple(_fix_compare(c) for c in cmd.compares), cmd.success, cmd.failure)
    return cmd


class Reference:
    """The state machine applied the direct way, each command in a nested LMDB write transaction of the
    `kv` sub-database: what the write-back buffer over LMDB must be indistinguishable from."""

    def __init__(self, path: Path) -> None:
        self.env = lmdb.open(str(path), max_dbs=2, map_size=64 << 20)
        self.db = self.env.open_db(b"kv")

    def apply(self, ents: list[Entry]) -> list:
        out = []
        with self.env.begin(write=True) as txn:
            for e in ents:
                cmd = commands.decode(e.data)
                try:
                    with self.env.begin(write=True, parent=txn) as child:
                        out.append(state_machine.apply_command(TxnView(child, self.db), cmd, e.index))
                except Exception as err:  # noqa: BLE001 - the store reports these as its results
                    out.append(err)
        return out

    def range(self, op: Range):  # noqa: ANN201
        with self.env.begin() as txn:
            return state_machine.range_read(TxnView(txn, self.db), op)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(command, min_size=1, max_size=6), st.sampled_from(["keep", "persist", "flush"])),
                min_size=1, max_size=8))
def test_the_write_back_buffer_applies_like_lmdb(tmp_path_factory: pytest.TempPathFactory, batches: list) -> None:
    """Commands applied into the write-back buffer (kept there, carried by a log append, or flushed
    alone) give the same results, and reads over buffer-and-LMDB the same answers, as the same commands
    applied straight into LMDB; and after the last flush LMDB alone holds exactly that state."""
    ref = Reference(tmp_path_factory.mktemp("ref"))
    s = open_store(tmp_path_factory.mktemp("buffered"))
    s.bootstrap(CONF, {})
    s.save_and_apply(None, [], None, [Entry(1, i) for i in (1, 2, 3)], CONF, None)
    index = 4
    everything = Range(b"", b"\0")
    for batch, then in batches:
        ents = cmd_entries(index, 2, [_fixed(c) for c in batch])
        index += len(ents)
        s.persist(HardState(2, 1, index - 1), ents, None, None)
        got = s.apply(ents, None)
        assert _comparable(got) == _comparable(ref.apply(ents))
        assert s.applied_index() == index - 1
        if then == "persist":
            s.persist(None, [], None, None)
        elif then == "flush":
            s.flush()
        assert s.range(everything) == ref.range(everything)
        for k in KEYS:
            assert s.range(Range(k)) == ref.range(Range(k))
            assert s.range(Range(k, b"\0", limit=2)) == ref.range(Range(k, b"\0", limit=2))
    s.flush()
    assert s.durable_applied_index() == index - 1
    s.close()
    s = open_store(s.path)
    assert s.range(everything) == ref.range(everything)
    s.close()
    ref.env.close()


def _comparable(results: list) -> list:
    return ["failed" if isinstance(r, Exception) else r for r in results]


def test_the_buffer_is_read_at_once_and_reaches_lmdb_with_its_applied_index(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.bootstrap(CONF, {})
    s.save_and_apply(HardState(2, 1, 3), [], None, [Entry(1, i) for i in (1, 2, 3)], CONF, None)
    put = cmd_entries(4, 2, [Put(b"a", b"1"), Put(b"b", b"1")])
    s.persist(HardState(2, 1, 3), put, None, None)
    assert s.apply(put, None)[0].revision == 4
    # Visible at once, not yet in LMDB.
    assert s.get(b"a").value == b"1" and s.applied_index() == 5 and s.durable_applied_index() == 3
    assert s.dirty() and s.flush_deadline() is not None
    ranged = cmd_entries(6, 2, [Delete(b"a", prefix_end(b"a"))])
    s.persist(None, ranged, None, None)  # the append carries the buffer: applied 5 beside its data
    assert s.durable_applied_index() == 5 and not s.dirty()
    assert s.apply(ranged, None)[0].deleted == 1 and s.get(b"a") is None
    s.note_hard_state(HardState(2, 1, 6))
    s.flush()
    assert s.durable_applied_index() == 6
    s.close()
    s = open_store(tmp_path)
    assert s.get(b"a") is None and s.get(b"b").value == b"1" and s.applied_index() == 6
    assert s.hard_state() == HardState(2, 1, 6)
    s.close()
