"""A peer's batches stay under the receiver's gRPC receive limit, which the port shares with clients:
many appends queued at once arrive in order over a server that reads at most 300 KiB per message (a gRPC
stream, or TCP frames to a peer port with the same limit per frame)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from benchmarks.ports import free_port
from raftkv.core import Entry, Message, MessageType
from raftkv.transport import Transport
from raftkv.transport.transport import server_options

from .peer_kinds import KINDS, peer_port

CLUSTER = b"c" * 16
LIMIT = 300 << 10


async def start(node_id: int, received: list[Message]) -> tuple[Transport, grpc.aio.Server, str]:
    address = f"127.0.0.1:{free_port()}"
    t = Transport(node_id, address, lambda: CLUSTER, on_message=received.append, on_unreachable=lambda _: None,
                  adopt_cluster_id=lambda _: None, snapshot_chunk=64 << 10, max_batch_bytes=LIMIT - (32 << 10))
    server = grpc.aio.server(options=server_options(LIMIT))
    t.register(server)
    server.add_insecure_port(address)
    await server.start()
    return t, server, address


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_queued_appends_are_split_into_batches_under_the_receive_limit(kind: str) -> None:
    received: list[Message] = []
    t1, s1, _ = await start(1, [])
    t2, s2, addr2 = await start(2, received)
    peer_addr2, port2 = await peer_port(t2, kind, LIMIT)
    try:
        t1.add_peer(2, addr2, peer_addr2)
        # 40 appends of 100 KiB each: 4 MiB queued at once, more than 13 times the receiver's limit.
        msgs = [Message(MessageType.APP, to=2, frm=1, term=3, index=i, log_term=3,
                        entries=[Entry(3, i + 1, data=bytes([i]) * (100 << 10))], commit=i) for i in range(40)]
        t1.send(msgs)
        for _ in range(1000):
            if len(received) == len(msgs):
                break
            await asyncio.sleep(0.01)
        assert [m.index for m in received] == list(range(40))
        assert all(m.entries[0].data == bytes([m.index]) * (100 << 10) for m in received)
        assert t2.refused == 0
    finally:
        if port2 is not None:
            await port2.stop()
        await t1.stop()
        await t2.stop()
        await s1.stop(0)
        await s2.stop(0)
