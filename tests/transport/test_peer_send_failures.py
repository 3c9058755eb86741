"""Heartbeats to a peer whose process is gone are counted as failed sends (what
`raftkv_heartbeat_send_failures_total` shows an operator), over both peer transports: a dead peer must
show up in the metric within a few heartbeats, however fast the connection attempts fail."""

from __future__ import annotations

import asyncio
import socket

import pytest

from raftkv.core import Message, MessageType
from raftkv.transport import Transport

from .peer_kinds import KINDS

CLUSTER = b"c" * 16


class Recorded:
    """TransportEvents that add up what they are told."""

    def __init__(self) -> None:
        self.messages = 0
        self.heartbeats = 0

    def send_failed(self, peer: int, messages: int, heartbeats: int) -> None:
        assert peer == 2
        self.messages += messages
        self.heartbeats += heartbeats

    def snapshot_sent(self, peer: int, ok: bool, seconds: float) -> None:
        pass

    def snapshot_received(self, peer: int, ok: bool, seconds: float) -> None:
        pass


def dead_address() -> str:
    """A loopback port nothing listens on (connections to it are refused at once)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_heartbeats_to_a_dead_peer_are_counted_as_failed(kind: str) -> None:
    events = Recorded()
    t = Transport(1, "127.0.0.1:1", lambda: CLUSTER, on_message=lambda _: None, on_unreachable=lambda _: None,
                  adopt_cluster_id=lambda _: None)
    t.events = events
    try:
        address = dead_address()
        t.add_peer(2, address, address if kind == "tcp" else "")
        sent = 0
        for _ in range(40):  # 40 heartbeats, one per 50 ms tick, as a leader sends them
            t.send([Message(MessageType.HEARTBEAT, to=2, frm=1, term=3, commit=0)])
            sent += 1
            await asyncio.sleep(0.05)
        # Every one of them, once the attempt under way when we stopped has failed too (its back-off is
        # at most ~1.5 s): none vanishes into a connection that never was.
        for _ in range(100):
            if events.heartbeats >= sent:
                break
            await asyncio.sleep(0.05)
        assert events.heartbeats == sent, (events.heartbeats, sent)
    finally:
        await t.stop()
