"""Snapshots as record streams on real LMDB files: a leader's store cut into pieces from one read
transaction, staged and verified on a follower's, installed in the Ready's transaction by switching the
state machine's generation; a corrupt piece, a short stream, a second stream at once or a stage cut off by
a restart is refused and leaves the follower's state as it was."""

from __future__ import annotations

import errno
import zlib
from pathlib import Path

import msgpack
import pytest

from raftkv.core import CompactedError, ConfState, Entry, HardState, Snapshot
from raftkv.storage import CorruptionError, LmdbNodeStore, StorageError, cluster_id_for
from raftkv.storage.commands import Put, Range, encode
from raftkv.storage.snapshots import SnapshotStreamError

CID = cluster_id_for({1: "a:1", 2: "b:2", 3: "c:3"})
CONF = ConfState(frozenset({1, 2, 3}))
EVERYTHING = Range(b"", b"\0")


def open_store(path: Path, node_id: int = 1) -> LmdbNodeStore:
    return LmdbNodeStore(path, node_id, CID, map_size=64 << 20)


def leader_with(path: Path, n: int, first: int = 4, term: int = 2) -> LmdbNodeStore:
    s = open_store(path)
    s.bootstrap(CONF, {1: b"m1", 2: b"m2"})
    ents = [Entry(term, first + i, data=encode(Put(b"k%04d" % i, b"v%d" % i * 10))) for i in range(n)]
    s.save_and_apply(HardState(term, 1, first + n - 1), ents, None, [Entry(1, i) for i in (1, 2, 3)] + ents, CONF,
                     {1: b"m1", 2: b"m2"})
    return s


def stream(src: LmdbNodeStore, dst: LmdbNodeStore, chunk: int = 300) -> tuple[Snapshot, list[tuple[bytes, int]]]:
    """Every piece of `src`'s snapshot, staged in `dst`; returns the snapshot to install and the pieces."""
    reader = src.open_snapshot_reader(chunk)
    pieces = []
    while (p := reader.next_piece()) is not None:
        pieces.append((p.data, p.crc))
    stage = dst.stage_snapshot(reader.meta)
    for data, crc in pieces:
        stage.add(data, crc)
    token = stage.finish(reader.count, reader.digest())
    reader.close()
    return Snapshot(reader.meta, token), pieces


def staged_records(store: LmdbNodeStore) -> int:
    with store.env.begin() as txn:
        return sum(txn.stat(db)["entries"] for db in store._staging_dbs)


def test_streamed_snapshot_reproduces_the_leaders_records(tmp_path: Path) -> None:
    src = leader_with(tmp_path / "a", 50)
    assert src.compact(40, CONF) == 53
    with pytest.raises(CompactedError):
        src.entries(10, 20)
    # The core's message carries metadata only, at once: no image is built.
    snap = src.snapshot()
    assert (snap.meta.index, snap.meta.term, snap.meta.conf, snap.data) == (53, 2, CONF, b"")
    dst = open_store(tmp_path / "b", node_id=2)
    dst.save_and_apply(HardState(1, 0, 0), [Entry(1, 1, data=encode(Put(b"stale", b"gone")))], None,
                       [Entry(1, 1, data=encode(Put(b"stale", b"gone")))], None, {3: b"m3"})
    staged, pieces = stream(src, dst)
    assert len(pieces) > 5  # many bounded pieces, not one image
    assert staged.meta == snap.meta and staged_records(dst) == 52  # 50 keys and 2 members
    assert dst.get(b"stale") is not None  # staged beside the live state, which is untouched
    dst.save_and_apply(HardState(2, 0, 53), [], staged, [], None, None)
    assert dst.applied_index() == 53 and dst.first_index() == 54 and dst.last_index() == 53
    assert dst.range(EVERYTHING).kvs == src.range(EVERYTHING).kvs  # the stale key is gone
    assert dst.load_members() == {1: b"m1", 2: b"m2"}
    assert staged_records(dst) == 0  # the old generation is emptied
    dst.close()
    dst = open_store(tmp_path / "b", node_id=2)  # survives a restart
    assert dst.get(b"k0049").value == b"v49" * 10 and dst.snapshot().meta.index == 53 and dst.term(53) == 2
    assert dst.get(b"stale") is None and dst.load_members() == {1: b"m1", 2: b"m2"}
    # A second install switches back to the first generation.
    src2 = leader_with(tmp_path / "c", 5, term=3)
    again, _ = stream(src2, dst)
    dst.save_and_apply(HardState(3, 0, 8), [], again, [], None, None)
    assert dst.range(EVERYTHING).kvs == src2.range(EVERYTHING).kvs
    dst.close()
    dst = open_store(tmp_path / "b", node_id=2)
    assert dst.range(EVERYTHING).kvs == src2.range(EVERYTHING).kvs and dst.applied_index() == 8


def test_reader_sees_one_point_of_the_log(tmp_path: Path) -> None:
    """Metadata and records come from one read transaction, whatever is applied while the stream goes."""
    src = leader_with(tmp_path / "a", 20)
    reader = src.open_snapshot_reader(100)
    later = [Entry(2, 24, data=encode(Put(b"later", b"x")))]
    src.save_and_apply(HardState(2, 1, 24), later, None, later, None, None)
    dst = open_store(tmp_path / "b", node_id=2)
    stage = dst.stage_snapshot(reader.meta)
    while (p := reader.next_piece()) is not None:
        stage.add(p.data, p.crc)
    snap = Snapshot(reader.meta, stage.finish(reader.count, reader.digest()))
    reader.close()
    assert snap.meta.index == 23
    dst.save_and_apply(HardState(2, 0, 23), [], snap, [], None, None)
    assert dst.get(b"later") is None and dst.get(b"k0019") is not None


def test_corrupt_piece_or_short_stream_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    src = leader_with(tmp_path / "a", 30)
    dst = leader_with(tmp_path / "b", 3, term=1)
    before = dst.range(EVERYTHING).kvs
    reader = src.open_snapshot_reader(200)
    pieces = []
    while (p := reader.next_piece()) is not None:
        pieces.append((p.data, p.crc))

    stage = dst.stage_snapshot(reader.meta)
    stage.add(*pieces[0])
    data, crc = pieces[1]
    flipped = data[:10] + bytes([data[10] ^ 0x01]) + data[11:]
    with pytest.raises(SnapshotStreamError, match="piece 1 .* fails its checksum"):
        stage.add(flipped, crc)
    stage.abort()

    stage = dst.stage_snapshot(reader.meta)
    for piece in pieces[:-1]:  # the last piece never came
        stage.add(*piece)
    with pytest.raises(SnapshotStreamError, match="does not check out"):
        stage.finish(reader.count, reader.digest())
    stage.abort()

    stage = dst.stage_snapshot(reader.meta)
    for piece in pieces:
        stage.add(*piece)
    with pytest.raises(SnapshotStreamError, match="SHA-256 differs"):
        stage.finish(reader.count, b"\0" * 32)
    stage.abort()
    reader.close()
    assert dst.range(EVERYTHING).kvs == before and dst.applied_index() == 6


def test_one_stage_at_a_time_and_only_the_staged_token_installs(tmp_path: Path) -> None:
    src = leader_with(tmp_path / "a", 30)
    dst = leader_with(tmp_path / "b", 3, term=1)
    before = dst.range(EVERYTHING).kvs
    snap, _ = stream(src, dst)
    with pytest.raises(OSError) as busy:  # complete but not yet installed: another would overwrite it
        dst.stage_snapshot(snap.meta)
    assert busy.value.errno == errno.EBUSY
    forged = Snapshot(snap.meta, snap.data[:-4] + b"beef")
    with pytest.raises(StorageError, match="not the one staged here"):
        dst.save_and_apply(HardState(2, 0, 33), [], forged, [], None, None)
    assert dst.range(EVERYTHING).kvs == before and dst.applied_index() == 6
    dst.discard_staged(snap.data)  # the core did not take it: the next stage may begin
    dst.stage_snapshot(snap.meta).abort()


def test_a_stage_cut_off_by_a_restart_leaves_the_state_and_is_emptied(tmp_path: Path) -> None:
    src = leader_with(tmp_path / "a", 30)
    dst = leader_with(tmp_path / "b", 3, term=1)
    before = dst.range(EVERYTHING).kvs
    reader = src.open_snapshot_reader(200)
    stage = dst.stage_snapshot(reader.meta)
    for _ in range(3):
        p = reader.next_piece()
        assert p is not None
        stage.add(p.data, p.crc)
    reader.close()
    assert staged_records(dst) > 0
    dst.close()  # stopped mid-stream
    reopened = open_store(tmp_path / "b")
    assert reopened.range(EVERYTHING).kvs == before and reopened.applied_index() == 6
    assert staged_records(reopened) == 0
    snap, _ = stream(src, reopened)  # and the retried stream installs
    reopened.save_and_apply(HardState(2, 0, 33), [], snap, [], None, None)
    assert reopened.range(EVERYTHING).kvs == src.range(EVERYTHING).kvs


def _flip_kv_record(store: LmdbNodeStore, key: bytes) -> None:
    """One byte of a stored kv record flipped, through LMDB, as a failing disk would leave it."""
    with store.env.begin(write=True) as txn:
        raw = bytearray(txn.get(key, db=store.kv_db))
        raw[-1] ^= 0x01
        txn.put(key, bytes(raw), db=store.kv_db)


def test_a_corrupted_record_is_neither_sent_nor_installed(tmp_path: Path) -> None:
    src = leader_with(tmp_path / "a", 30)
    dst = leader_with(tmp_path / "b", 3, term=1)
    before = dst.range(EVERYTHING).kvs
    good, _ = stream(src, dst)  # pieces cut before the damage, to replay after it
    dst.discard_staged(good.data)
    reader = src.open_snapshot_reader(200)
    pieces = []
    while (p := reader.next_piece()) is not None:
        pieces.append((p.data, p.crc))
    reader.close()
    _flip_kv_record(src, b"k0012")
    # The leader refuses to send it, naming the node, the file and the key.
    reader = src.open_snapshot_reader(200)
    with pytest.raises(CorruptionError, match=r"node 1: .*data.mdb.*k0012.*checksum"):
        while reader.next_piece() is not None:
            pass
    reader.close()
    # A piece whose CRC matches but that carries a record failing its own seal is refused by the follower.
    flat = [msgpack.unpackb(d) for d, _ in pieces]
    victim = next(i for i, f in enumerate(flat) if b"k0012" in f[1::3])
    j = flat[victim].index(b"k0012")
    flat[victim][j + 1] = flat[victim][j + 1][:-1] + bytes([flat[victim][j + 1][-1] ^ 0x01])
    data = msgpack.packb(flat[victim], use_bin_type=True)
    stage = dst.stage_snapshot(good.meta)
    for d, c in pieces[:victim]:
        stage.add(d, c)
    with pytest.raises(SnapshotStreamError, match=r"piece \d+ .*k0012.*checksum"):
        stage.add(data, zlib.crc32(data))
    stage.abort()
    assert dst.range(EVERYTHING).kvs == before and dst.applied_index() == 6


def test_the_corrupt_value_nemesis_finds_the_live_generation(tmp_path: Path) -> None:
    """After a streamed install the live `kv` is the other generation: the partition suite's corrupt-value
    fault must still hit a record the node serves."""
    import random

    from tests.jepsen.data_faults import corrupt_value, restore_value

    src = leader_with(tmp_path / "a", 20)
    dst = open_store(tmp_path / "b", node_id=2)
    snap, _ = stream(src, dst)
    dst.save_and_apply(HardState(2, 0, snap.meta.index), [], snap, [], None, None)
    assert dst._generation == 1
    dst.close()
    c = corrupt_value(tmp_path / "b", random.Random(3))
    dst = open_store(tmp_path / "b", node_id=2)
    with pytest.raises(CorruptionError, match="checksum"):
        dst.get(c.key)
    dst.close()
    assert restore_value(c) == "restored"
    dst = open_store(tmp_path / "b", node_id=2)
    assert dst.get(c.key) is not None


def test_a_read_sees_data_and_applied_index_of_one_side_of_an_install(tmp_path: Path) -> None:
    """A read transaction begun before an install keeps reading the old state with the old applied index,
    one begun after it the new state with the new index, whichever handles the store holds meanwhile."""
    src = leader_with(tmp_path / "a", 20)
    dst = leader_with(tmp_path / "b", 3, term=1)
    dst.save_and_apply(None, [Entry(1, 7, data=encode(Put(b"old-only", b"x")))], None,
                       [Entry(1, 7, data=encode(Put(b"old-only", b"x")))], None, None)
    snap, _ = stream(src, dst)
    before = dst.env.begin()
    dst.save_and_apply(HardState(2, 0, snap.meta.index), [], snap, [], None, None)
    after = dst.env.begin()
    try:
        old_view, new_view = dst._view(before), dst._view(after)
        assert old_view.get(b"old-only") is not None and dst._applied_in(before) == 7
        assert new_view.get(b"old-only") is None and new_view.get(b"k0019") is not None
        assert dst._applied_in(after) == snap.meta.index
    finally:
        before.abort()
        after.abort()
