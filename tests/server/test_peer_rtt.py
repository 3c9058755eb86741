"""Heartbeat round trips per peer (server/peer_rtt.py): an answer to the timed heartbeat is observed once;
answers to other heartbeats are not; a heartbeat never answered is given up so later ones are timed."""

from __future__ import annotations

from raftkv.core import Message, MessageType
from raftkv.server.peer_rtt import GIVE_UP_S, PeerRtt


def _beat(to: int, ctx: bytes) -> Message:
    return Message(type=MessageType.HEARTBEAT, to=to, frm=1, context=ctx)


def _answer(frm: int, ctx: bytes) -> Message:
    return Message(type=MessageType.HEARTBEAT_RESP, to=1, frm=frm, context=ctx)


def test_round_trips_are_timed_per_peer_by_heartbeat_round() -> None:
    seen: list[tuple[int, float]] = []
    rtt = PeerRtt(lambda peer, s: seen.append((peer, round(s, 6))))
    rtt.sent(_beat(2, b"r1"), 10.0)
    rtt.sent(_beat(3, b"r1"), 10.0)
    rtt.sent(_beat(2, b"r2"), 10.1)  # peer 2 still has r1 in flight: r2 is not timed
    rtt.answered(_answer(2, b"r2"), 10.2)
    rtt.answered(_answer(2, b"r1"), 10.3)
    rtt.answered(_answer(2, b"r1"), 10.4)  # a duplicate answer counts once
    rtt.answered(_answer(3, b"r1"), 10.05)
    assert seen == [(2, 0.3), (3, 0.05)]


def test_an_unanswered_heartbeat_is_given_up() -> None:
    seen: list[tuple[int, float]] = []
    rtt = PeerRtt(lambda peer, s: seen.append((peer, round(s, 6))))
    rtt.sent(_beat(2, b"lost"), 0.0)
    rtt.sent(_beat(2, b"r2"), GIVE_UP_S / 2)
    rtt.answered(_answer(2, b"r2"), GIVE_UP_S / 2 + 0.01)
    assert seen == []
    rtt.sent(_beat(2, b"r3"), GIVE_UP_S + 1)
    rtt.answered(_answer(2, b"r3"), GIVE_UP_S + 1.02)
    assert seen == [(2, 0.02)]
