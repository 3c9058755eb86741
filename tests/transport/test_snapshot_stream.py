"""InstallSnapshot over real gRPC on loopback between two real LMDB stores: a snapshot message becomes a
stream of the leader's records and arrives as a staged snapshot that installs them; the leader hears
"installed" only once the follower has installed it; a corrupt piece, a stream that ends early and one
cancelled midway are refused, logged, and leave the follower's state as it was."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from structlog.testing import capture_logs

from benchmarks.ports import free_port
from raftkv.core import ConfState, Entry, HardState, Message, MessageType, Snapshot
from raftkv.proto.stubs import raft_pb2 as pb
from raftkv.proto.stubs import raft_pb2_grpc as pb_grpc
from raftkv.storage import LmdbNodeStore, cluster_id_for
from raftkv.storage.commands import Put, Range, encode
from raftkv.transport import Transport
from raftkv.transport.codec import to_proto
from raftkv.transport.transport import CHANNEL_OPTIONS

CID = cluster_id_for({1: "a:1", 2: "b:2"})
CONF = ConfState(frozenset({1, 2}))
EVERYTHING = Range(b"", b"\0")


def leader_store(path: Path, n: int) -> LmdbNodeStore:
    s = LmdbNodeStore(path, 1, CID, map_size=64 << 20)
    s.bootstrap(CONF, {1: b"m1", 2: b"m2"})
    ents = [Entry(2, 3 + i, data=encode(Put(b"key-%05d" % i, b"%05d" % i * 20))) for i in range(n)]
    s.save_and_apply(HardState(2, 1, 2 + n), ents, None, [Entry(1, 1), Entry(1, 2)] + ents, CONF,
                     {1: b"m1", 2: b"m2"})
    return s


class Node:
    def __init__(self, node_id: int, store: LmdbNodeStore | None, install: object = None) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        self.statuses: list[tuple[int, bool]] = []
        self.t = Transport(node_id, self.address, lambda: CID, on_message=lambda m: None,
                           on_unreachable=lambda _: None, adopt_cluster_id=lambda _: None, snapshot_store=store,
                           on_snapshot=install, on_snapshot_status=lambda to, ok: self.statuses.append((to, ok)),
                           snapshot_stream_chunk=4096)
        self.server = grpc.aio.server(options=CHANNEL_OPTIONS)
        self.t.register(self.server)
        self.server.add_insecure_port(self.address)

    async def __aenter__(self) -> Node:
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.t.stop()
        await self.server.stop(0)


async def until(check: object, timeout: float = 20.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def staged_records(store: LmdbNodeStore) -> int:
    with store.env.begin() as txn:
        return sum(txn.stat(db)["entries"] for db in store._staging_dbs)


def stage_released(store: LmdbNodeStore) -> bool:
    """No stage holds the follower: a new stream may begin."""
    return store._stage_owner is None


@pytest.mark.asyncio
async def test_snapshot_streams_installs_and_is_reported_only_once_installed(tmp_path: Path) -> None:
    src = leader_store(tmp_path / "a", 400)  # ~50 pieces of 4 KiB
    dst = LmdbNodeStore(tmp_path / "b", 2, CID, map_size=64 << 20)
    release = asyncio.Event()
    arrived: list[Message] = []

    async def install(m: Message) -> bool:
        """As the host does: the core takes the message, and the Ready's transaction installs it."""
        arrived.append(m)
        await release.wait()
        assert m.snapshot is not None
        await asyncio.to_thread(dst.save_and_apply, HardState(3, 0, m.snapshot.meta.index), [], m.snapshot, [],
                                None, None)
        return True

    async with Node(1, src) as leader, Node(2, dst, install) as follower:
        leader.t.add_peer(2, follower.address)
        snap = src.snapshot()
        assert snap.data == b""  # metadata only
        leader.t.send([Message(MessageType.SNAP, to=2, frm=1, term=3, snapshot=snap)])
        await until(lambda: arrived)
        got = arrived[0]
        assert got.type == MessageType.SNAP and got.frm == 1 and got.term == 3
        assert got.snapshot is not None and got.snapshot.meta == snap.meta
        await asyncio.sleep(0.3)
        assert leader.statuses == []  # received and staged is not installed: nothing reported yet
        assert leader.t.snapshot_floor() == snap.meta.index  # compaction keeps the entries after it
        release.set()
        await until(lambda: leader.statuses)
        assert leader.statuses == [(2, True)] and leader.t.snapshot_floor() is None
    assert dst.range(EVERYTHING).kvs == src.range(EVERYTHING).kvs
    assert dst.load_members() == src.load_members() and dst.applied_index() == src.applied_index()
    assert staged_records(dst) == 0 and stage_released(dst)


@pytest.mark.asyncio
async def test_a_snapshot_the_follower_did_not_need_is_dropped_there(tmp_path: Path) -> None:
    src = leader_store(tmp_path / "a", 50)
    dst = LmdbNodeStore(tmp_path / "b", 2, CID, map_size=64 << 20)

    async def already_held(m: Message) -> bool:
        return False  # the core held everything the snapshot covers

    async with Node(1, src) as leader, Node(2, dst, already_held) as follower:
        leader.t.add_peer(2, follower.address)
        leader.t.send([Message(MessageType.SNAP, to=2, frm=1, term=3, snapshot=src.snapshot())])
        await until(lambda: leader.statuses)
        assert leader.statuses == [(2, True)]  # the follower holds the data: no reason to send it again
    assert stage_released(dst) and dst.applied_index() == 0


@pytest.mark.asyncio
async def test_a_failed_stream_is_reported_as_failed(tmp_path: Path) -> None:
    src = leader_store(tmp_path / "a", 10)
    async with Node(1, src) as leader, Node(2, None) as follower:  # takes no snapshot streams
        leader.t.add_peer(2, follower.address)
        leader.t.send([Message(MessageType.SNAP, to=2, frm=1, term=3, snapshot=src.snapshot())])
        await until(lambda: leader.statuses)
        assert leader.statuses == [(2, False)]


def pieces_of(src: LmdbNodeStore) -> tuple[pb.SnapshotChunk, list[pb.SnapshotChunk], pb.SnapshotChunk]:
    reader = src.open_snapshot_reader(2048)
    head = pb.SnapshotChunk(head=pb.MessageBatch(cluster_id=CID, **{"from": 1}, messages=[to_proto(
        Message(MessageType.SNAP, to=2, frm=1, term=3, snapshot=Snapshot(reader.meta)))]))
    body = []
    while (p := reader.next_piece()) is not None:
        body.append(pb.SnapshotChunk(data=p.data, crc=p.crc))
    last = pb.SnapshotChunk(last=True, records=reader.count, sha256=reader.digest())
    reader.close()
    return head, body, last


@pytest.mark.asyncio
@pytest.mark.parametrize("fault", ["corrupt-piece", "no-last-piece", "cancelled"])
async def test_broken_or_corrupt_streams_are_refused_and_change_nothing(tmp_path: Path, fault: str) -> None:
    src = leader_store(tmp_path / "a", 200)
    dst = LmdbNodeStore(tmp_path / "b", 2, CID, map_size=64 << 20)
    before = dst.range(EVERYTHING).kvs
    arrived: list[Message] = []

    async def install(m: Message) -> bool:
        arrived.append(m)
        return True

    head, body, last = pieces_of(src)
    if fault == "corrupt-piece":
        data = bytearray(body[3].data)
        data[7] ^= 0x10
        body[3] = pb.SnapshotChunk(data=bytes(data), crc=body[3].crc)
    hold = asyncio.Event()

    async def chunks() -> AsyncIterator[pb.SnapshotChunk]:
        yield head
        for i, c in enumerate(body):
            if fault == "cancelled" and i == len(body) // 2:
                hold.set()
                await asyncio.sleep(30)
            yield c
        if fault != "no-last-piece":
            yield last

    async with Node(2, dst, install) as follower:
        async with grpc.aio.insecure_channel(follower.address) as ch:
            with capture_logs() as logs:
                call = pb_grpc.RaftStub(ch).InstallSnapshot(chunks(), timeout=20)
                if fault == "cancelled":
                    await hold.wait()
                    await until(lambda: staged_records(dst) > 0)  # half a stream is staged
                    call.cancel()
                    await until(lambda: stage_released(dst))
                else:
                    with pytest.raises(grpc.aio.AioRpcError) as e:
                        await call
                    expected = grpc.StatusCode.DATA_LOSS if fault == "corrupt-piece" else grpc.StatusCode.ABORTED
                    assert e.value.code() == expected, e.value
        events = [e["event"] for e in logs]
    if fault == "corrupt-piece":
        assert any(ev.startswith("snapshot refused") for ev in events), events
        assert "piece 3" in e.value.details() and "checksum" in e.value.details()
    elif fault == "no-last-piece":
        assert any("ended before its last piece" in ev for ev in events), events
    assert arrived == [] and stage_released(dst)
    assert dst.range(EVERYTHING).kvs == before and dst.applied_index() == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("forgery", ["another-cluster", "claims-to-be-the-receiver", "not-a-snapshot"])
async def test_a_snapshot_stream_is_admitted_as_a_send_stream_is(tmp_path: Path, forgery: str) -> None:
    src = leader_store(tmp_path / "a", 20)
    dst = LmdbNodeStore(tmp_path / "b", 2, CID, map_size=64 << 20)
    arrived: list[Message] = []

    async def install(m: Message) -> bool:
        arrived.append(m)
        return True

    head, body, last = pieces_of(src)
    if forgery == "another-cluster":
        head.head.cluster_id = b"x" * 16
    elif forgery == "claims-to-be-the-receiver":
        setattr(head.head, "from", 2)
        setattr(head.head.messages[0], "from", 2)
    else:
        head.head.messages[0].type = int(MessageType.APP)
    expected = {"another-cluster": grpc.StatusCode.FAILED_PRECONDITION,
                "claims-to-be-the-receiver": grpc.StatusCode.PERMISSION_DENIED,
                "not-a-snapshot": grpc.StatusCode.INVALID_ARGUMENT}[forgery]

    async def chunks() -> AsyncIterator[pb.SnapshotChunk]:
        yield head
        for c in body:
            yield c
        yield last

    async with Node(2, dst, install) as follower:
        async with grpc.aio.insecure_channel(follower.address) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await pb_grpc.RaftStub(ch).InstallSnapshot(chunks(), timeout=20)
    assert e.value.code() == expected, e.value
    assert arrived == [] and stage_released(dst) and staged_records(dst) == 0 and dst.applied_index() == 0
