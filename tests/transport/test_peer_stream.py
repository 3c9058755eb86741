"""Two transports over real gRPC on loopback, or over TCP frames to a peer port: messages arrive in order, and
a snapshot larger than a chunk arrives whole, reassembled from many batches on the stream."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest

from benchmarks.ports import free_port
from raftkv.core import ConfState, Entry, Message, MessageType, Snapshot, SnapshotMeta
from raftkv.transport import Transport
from raftkv.transport.transport import CHANNEL_OPTIONS, PEER_MAX_MESSAGE

from .peer_kinds import KINDS, peer_port

CLUSTER = b"c" * 16


async def start(node_id: int, received: list[Message], chunk: int) -> tuple[Transport, grpc.aio.Server, str]:
    address = f"127.0.0.1:{free_port()}"
    t = Transport(node_id, address, lambda: CLUSTER, on_message=received.append, on_unreachable=lambda _: None,
                  adopt_cluster_id=lambda _: None, snapshot_chunk=chunk)
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    t.register(server)
    server.add_insecure_port(address)
    await server.start()
    return t, server, address


def snap_message(data: bytes, index: int) -> Message:
    meta = SnapshotMeta(index, 3, ConfState(frozenset({1, 2, 3}), frozenset({4})))
    return Message(MessageType.SNAP, to=2, frm=1, term=3, snapshot=Snapshot(meta, data))


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [0, 10, 64 * 1024, 64 * 1024 + 1, 3 * 64 * 1024, 1_000_003])
async def test_snapshots_of_every_size_arrive_whole_and_in_order(size: int, kind: str) -> None:
    chunk = 64 * 1024
    received: list[Message] = []
    t1, s1, _ = await start(1, [], chunk)
    t2, s2, addr2 = await start(2, received, chunk)
    peer_addr2, port2 = await peer_port(t2, kind, PEER_MAX_MESSAGE)
    try:
        t1.add_peer(2, addr2, peer_addr2)
        data = os.urandom(size)
        before = Message(MessageType.APP, to=2, frm=1, term=3, index=7, log_term=3,
                         entries=[Entry(3, 8, data=b"x")], commit=7)
        after = Message(MessageType.HEARTBEAT, to=2, frm=1, term=3, commit=7, context=b"r1")
        t1.send([before, snap_message(data, 100), after, snap_message(data[::-1], 101)])
        for _ in range(500):
            if len(received) == 4:
                break
            await asyncio.sleep(0.01)
        assert [m.type for m in received] == [MessageType.APP, MessageType.SNAP, MessageType.HEARTBEAT,
                                              MessageType.SNAP]
        assert received[0].entries[0].data == b"x"
        first, second = received[1].snapshot, received[3].snapshot
        assert first is not None and second is not None
        assert first.data == data and second.data == data[::-1]
        assert first.meta == SnapshotMeta(100, 3, ConfState(frozenset({1, 2, 3}), frozenset({4})))
        assert second.meta.index == 101
    finally:
        if port2 is not None:
            await port2.stop()
        await t1.stop()
        await t2.stop()
        await s1.stop(0)
        await s2.stop(0)
