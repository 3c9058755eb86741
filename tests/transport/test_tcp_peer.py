"""The TCP peer port's refusals as the sender sees them: a refused sender is told why in a frame, tells its
gate (a node its peers refuse is not ready) and its host (a removed member learns it), logs it once
however often it reconnects, and keeps reconnecting with back-off."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from structlog.testing import capture_logs

from benchmarks.ports import free_port
from raftkv.core import Message, MessageType
from raftkv.proto.stubs import raft_pb2 as pb
from raftkv.tls import PeerIdentity, PeerRefusal
from raftkv.transport import Transport
from raftkv.transport.tcp_peer import TcpPeerServer
from raftkv.transport.transport import OpenGate

CLUSTER = b"c" * 16
REASON = "node 1 is not a member of this cluster (members: 2, 3)"


class Refusing(OpenGate):
    def check(self, batch: pb.MessageBatch, peer: PeerIdentity | None) -> PeerRefusal | None:
        return PeerRefusal(grpc.StatusCode.PERMISSION_DENIED, REASON)


class Recording(OpenGate):
    def __init__(self) -> None:
        self.refusals: list[tuple[int, grpc.StatusCode, str]] = []

    def refused_by(self, peer_id: int, code: grpc.StatusCode, reason: str) -> None:
        self.refusals.append((peer_id, code, reason))


@pytest.mark.asyncio
async def test_a_refused_sender_learns_why_logs_it_once_and_keeps_trying() -> None:
    received: list[Message] = []
    t2 = Transport(2, "127.0.0.1:1", lambda: CLUSTER, on_message=received.append, gate=Refusing())
    port = TcpPeerServer(t2, None, 1 << 20)
    address = f"127.0.0.1:{free_port()}"
    await port.start(address)
    gate = Recording()
    refused: list[tuple[int, str]] = []
    t1 = Transport(1, "127.0.0.1:2", lambda: CLUSTER, gate=gate, on_refused=lambda p, r: refused.append((p, r)),
                   on_unreachable=lambda _: None)
    try:
        with capture_logs() as logs:
            t1.add_peer(2, "127.0.0.1:1", address)
            for _ in range(40):  # 2 s of heartbeats: the sender reconnects several times
                t1.send([Message(MessageType.HEARTBEAT, to=2, frm=1, term=3)])
                await asyncio.sleep(0.05)
        assert received == []
        # Reconnected and refused again, with a growing back-off between (0.05 s doubling to 1 s, jittered:
        # about 6 connections in 2 s, where a back-off that started over would make dozens).
        assert 3 <= t2.refused <= 10, t2.refused
        assert gate.refusals and set(gate.refusals) == {(2, grpc.StatusCode.PERMISSION_DENIED, REASON)}
        assert refused and set(refused) == {(2, REASON)}
        said = [e for e in logs if e["event"] == "peer refused our stream"]
        heard = [e for e in logs if e["event"] == "refused a Raft stream"]
        assert len(said) == 1 and said[0]["reason"] == REASON and said[0]["code"] == "PERMISSION_DENIED"
        assert len(heard) == 1 and heard[0]["port"] == "peer"
    finally:
        await t1.stop()
        await port.stop()
        await t2.stop()


@pytest.mark.asyncio
async def test_a_peer_port_that_is_down_reports_the_peer_unreachable_until_it_is_up() -> None:
    address = f"127.0.0.1:{free_port()}"
    unreachable: list[int] = []
    t1 = Transport(1, "127.0.0.1:2", lambda: CLUSTER, on_unreachable=unreachable.append)
    received: list[Message] = []
    t2 = Transport(2, "127.0.0.1:1", lambda: CLUSTER, on_message=received.append)
    port = TcpPeerServer(t2, None, 1 << 20)
    try:
        t1.add_peer(2, "127.0.0.1:1", address)
        await asyncio.sleep(0.3)
        assert unreachable and set(unreachable) == {2}
        await port.start(address)
        for _ in range(100):  # reconnects within its back-off (at most ~1.5 s)
            t1.send([Message(MessageType.HEARTBEAT, to=2, frm=1, term=3)])
            if received:
                break
            await asyncio.sleep(0.05)
        assert received and received[0].type == MessageType.HEARTBEAT and received[0].frm == 1
    finally:
        await t1.stop()
        await port.stop()
        await t2.stop()
