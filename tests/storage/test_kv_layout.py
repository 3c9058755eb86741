"""The `kv` sub-database's layout on real LMDB: keys longer than LMDB's key limit live in buckets under
their first `threshold` bytes, and the store behaves exactly like a plain sorted map of full keys (order
included); every record carries a checksum that is verified on every read; a command that cannot be
applied fails alone and atomically."""

from __future__ import annotations

from pathlib import Path

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftkv.core import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta
from raftkv.storage import CorruptionError, LmdbNodeStore, cluster_id_for
from raftkv.storage import state_machine as sm
from raftkv.storage.commands import Delete, Put, Range, Txn, encode, prefix_end
from raftkv.storage.kv_records import BUCKET_THRESHOLD

CID = cluster_id_for({1: "a:1"})
CONF = ConfState(frozenset({1}))


def open_store(path: Path) -> LmdbNodeStore:
    return LmdbNodeStore(path, 1, CID, map_size=64 << 20)


def started(path: Path) -> LmdbNodeStore:
    s = open_store(path)
    s.bootstrap(CONF, {})
    s.save_and_apply(HardState(1, 1, 1), [], None, [Entry(1, 1)], CONF, None)
    return s


def apply(s: LmdbNodeStore, cmds: list, buffered: bool = False) -> list:
    """`cmds` appended and applied: in one Ready made durable whole, or (`buffered`) as the host does it,
    the append synced and the apply left in the write-back buffer, which reads see over LMDB."""
    first = s.last_index() + 1
    ents = [Entry(1, first + i, EntryType.NORMAL, encode(c) if not isinstance(c, bytes) else c)
            for i, c in enumerate(cmds)]
    if buffered:
        s.persist(None, ents, None, None)
        return s.apply(ents, None)
    return s.save_and_apply(None, ents, None, ents, None, None)


# ------------------------------------------------------------------------------------------------
# A plain sorted map as the model, the bucketed LMDB view under test (small threshold: many buckets)
# ------------------------------------------------------------------------------------------------
class Model:
    def __init__(self) -> None:
        self.kv: dict[bytes, tuple[bytes, int, int, int]] = {}

    @staticmethod
    def _in(k: bytes, start: bytes, end: bytes) -> bool:
        if not end:
            return k == start
        if end == b"\0":
            return k >= start
        return start <= k < end

    def range(self, start: bytes, end: bytes, limit: int) -> tuple[list[tuple[bytes, bytes, int, int, int]], int, bool]:
        keys = sorted(k for k in self.kv if self._in(k, start, end))
        shown = keys[:limit] if limit else keys
        return [(k, *self.kv[k]) for k in shown], len(keys), len(shown) < len(keys)

    def put(self, key: bytes, value: bytes, rev: int) -> None:
        old = self.kv.get(key)
        self.kv[key] = (value, rev, rev, 1) if old is None else (value, old[1], rev, old[3] + 1)

    def delete(self, start: bytes, end: bytes) -> int:
        gone = [k for k in self.kv if self._in(k, start, end)]
        for k in gone:
            del self.kv[k]
        return len(gone)


THRESHOLD = 4
key = st.binary(min_size=1, max_size=9).map(lambda b: bytes(x % 3 + 0x61 if x < 250 else 0xFF for x in b))
end = st.one_of(st.just(b""), st.just(b"\0"), key, key.map(prefix_end))
op = st.one_of(
    st.tuples(st.just("put"), key, st.binary(max_size=3)),
    st.tuples(st.just("delete"), key, end),
    st.tuples(st.just("range"), key, end, st.integers(0, 3)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(op, min_size=1, max_size=40))
def test_bucketed_view_behaves_like_a_sorted_map(tmp_path_factory: pytest.TempPathFactory, ops: list) -> None:
    env = lmdb.open(str(tmp_path_factory.mktemp("layout")), map_size=16 << 20, max_dbs=2)
    db = env.open_db(b"kv")
    model = Model()
    try:
        for rev, o in enumerate(ops, start=1):
            with env.begin(write=True) as txn:
                view = sm.TxnView(txn, db, "test", threshold=THRESHOLD)
                if o[0] == "put":
                    sm.apply_command(view, Put(o[1], o[2]), rev)
                    model.put(o[1], o[2], rev)
                elif o[0] == "delete":
                    res = sm.apply_command(view, Delete(o[1], o[2]), rev)
                    assert res.deleted == model.delete(o[1], o[2])
                else:
                    got = sm.range_read(view, Range(o[1], o[2], limit=o[3]))
                    kvs, count, more = model.range(o[1], o[2], o[3])
                    assert [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version)
                            for kv in got.kvs] == kvs
                    assert (got.count, got.more) == (count, more)
                    for k in model.kv:
                        assert sm.get(view, k) is not None
        with env.begin() as txn:
            view = sm.TxnView(txn, db, "test", threshold=THRESHOLD)
            everything = sm.range_read(view, Range(b"\0", b"\0"))
            assert [kv.key for kv in everything.kvs] == sorted(model.kv) == [k for k, _ in view.records()]
    finally:
        env.close()


# ------------------------------------------------------------------------------------------------
# Long keys through the store, at the real threshold
# ------------------------------------------------------------------------------------------------
LONG = [b"L" * 600, b"L" * 600 + b"a", b"L" * 4096, b"L" * 480, b"L" * 479, b"L" * 481, b"M" * 700,
        b"L" * 470 + b"x" * 200]


@pytest.mark.parametrize("buffered", [False, True])
def test_long_keys_put_get_range_txn_delete_and_reopen(tmp_path: Path, buffered: bool) -> None:
    assert BUCKET_THRESHOLD < 511
    s = started(tmp_path)
    res = apply(s, [Put(k, b"v%d" % len(k)) for k in LONG] + [Put(b"L", b"short")], buffered)
    assert all(r.revision > 0 for r in res)
    for k in LONG:
        assert s.get(k).value == b"v%d" % len(k)
    r = s.range(Range(b"L", prefix_end(b"L")))
    assert [kv.key for kv in r.kvs] == sorted([b"L"] + [k for k in LONG if k.startswith(b"L")])
    r = s.range(Range(b"L" * 480, b"\0", limit=2))
    assert [kv.key for kv in r.kvs] == sorted(k for k in LONG if k >= b"L" * 480)[:2] and r.more
    t = Txn((), (Put(b"L" * 4096, b"new", prev_kv=True), Delete(b"L" * 600)), ())
    tr = apply(s, [t], buffered)[0]
    assert tr.succeeded and tr.results[0].prev.value == b"v4096"
    assert s.get(b"L" * 600) is None and s.get(b"L" * 4096).version == 2
    s.flush()
    s.close()
    s = open_store(tmp_path)
    assert s.get(b"L" * 4096).value == b"new" and s.get(b"L" * 600 + b"a").value == b"v601"
    dr = apply(s, [Delete(b"L" * 480, prefix_end(b"L" * 480))])[0]
    assert dr.deleted == 4
    assert [kv.key for kv in s.range(Range(b"\0", b"\0")).kvs] == [b"L", b"L" * 479, b"L" * 470 + b"x" * 200, b"M" * 700]
    s.close()


def read_snapshot(src: LmdbNodeStore, chunk: int = 1 << 20) -> tuple[SnapshotMeta, list[tuple[bytes, int]], int, bytes]:
    """Every piece of `src`'s snapshot stream: (metadata, pieces, record count, SHA-256)."""
    reader = src.open_snapshot_reader(chunk)
    try:
        pieces = []
        while (p := reader.next_piece()) is not None:
            pieces.append((p.data, p.crc))
        return reader.meta, pieces, reader.count, reader.digest()
    finally:
        reader.close()


def stream_snapshot(src: LmdbNodeStore, dst: LmdbNodeStore) -> Snapshot:
    """`src`'s snapshot staged in `dst`, as the transport does it; the snapshot to install."""
    meta, pieces, count, digest = read_snapshot(src, 512)
    stage = dst.stage_snapshot(meta)
    for data, crc in pieces:
        stage.add(data, crc)
    return Snapshot(meta, stage.finish(count, digest))


def test_snapshot_of_long_keys_installs_elsewhere(tmp_path: Path) -> None:
    src = started(tmp_path / "a")
    apply(src, [Put(k, k[-3:]) for k in LONG])
    dst = LmdbNodeStore(tmp_path / "b", 2, CID, map_size=64 << 20)
    snap = stream_snapshot(src, dst)
    dst.save_and_apply(HardState(1, 0, snap.meta.index), [], snap, [], None, None)
    assert dst.range(Range(b"\0", b"\0")).kvs == src.range(Range(b"\0", b"\0")).kvs
    dst.close()
    src.close()


# ------------------------------------------------------------------------------------------------
# An entry that cannot be applied fails alone, atomically, and still counts as applied
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("buffered", [False, True])
def test_an_entry_that_cannot_be_applied_fails_alone(tmp_path: Path, buffered: bool) -> None:
    s = started(tmp_path)
    # An empty key cannot be stored in LMDB; the API never proposes one, but a log may carry it.
    bad_txn = Txn((), (Put(b"a", b"partial"), Put(b"", b"x")), ())
    res = apply(s, [Put(b"a", b"1"), Put(b"", b"x"), bad_txn, Put(b"b", b"2")], buffered)
    assert res[0].revision > 0 and res[3].revision > 0
    assert isinstance(res[1], ValueError) and isinstance(res[2], ValueError)
    assert "cannot be applied" in str(res[1])
    assert s.get(b"a").value == b"1" and s.get(b"b").value == b"2"  # the failed Txn wrote nothing
    assert s.applied_index() == s.last_index()
    s.close()


# ------------------------------------------------------------------------------------------------
# Checksums of stored records
# ------------------------------------------------------------------------------------------------
def _flip_record(path: Path, lmdb_key: bytes) -> None:
    env = lmdb.open(str(path), max_dbs=8, map_size=64 << 20)
    db = env.open_db(b"kv")
    with env.begin(write=True) as txn:
        raw = bytearray(txn.get(lmdb_key, db=db))
        raw[-1] ^= 0x01
        txn.put(lmdb_key, bytes(raw), db=db)
    env.close()


@pytest.mark.parametrize("key", [b"plain", b"B" * 700])
def test_a_flipped_value_is_refused_on_every_read(tmp_path: Path, key: bytes) -> None:
    s = started(tmp_path)
    apply(s, [Put(key, b"value-1"), Put(b"other", b"x")])
    s.close()
    _flip_record(tmp_path, key[:BUCKET_THRESHOLD])
    s = open_store(tmp_path)
    before = s.applied_index()
    shown = repr(key[:16])[:-1]
    for read in (lambda: s.get(key), lambda: s.range(Range(b"\0", b"\0")),
                 lambda: s.range(Range(b"\0", b"\0", count_only=True)), lambda: read_snapshot(s)):
        with pytest.raises(CorruptionError) as e:
            read()
        msg = str(e.value)
        assert "node 1" in msg and "data.mdb" in msg and shown in msg and "checksum" in msg and "\n" not in msg
    assert s.get(b"other").value == b"x"  # the rest is served
    for cmd in (Put(key, b"v2"), Txn(((sm.Compare(key, "value", "=", b"x")),), (), ())):
        for buffered in (False, True):
            with pytest.raises(CorruptionError, match="checksum"):
                apply(s, [cmd], buffered)
    assert s.applied_index() == before  # nothing applied past the corruption
    s.close()
