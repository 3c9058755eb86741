"""The host envelope on the wire (transport/envelope.py, codec.py): a Raft message's stamps travel beside
its Raft fields in the same RaftMessage, and the core's Message has no field for them."""

from __future__ import annotations

import dataclasses

from raftkv.core import Entry, Message, MessageType
from raftkv.transport.codec import from_proto, to_proto
from raftkv.transport.envelope import StampedMessage, applied_of, echo_of, stamp_of, wrap


def test_the_core_message_holds_only_raft_fields() -> None:
    names = {f.name for f in dataclasses.fields(Message)}
    assert not names & {"stamp", "echo_stamp", "echo_commit", "applied"}


def test_stamps_survive_the_wire_and_a_plain_message_carries_none() -> None:
    m = Message(MessageType.HEARTBEAT, to=2, frm=1, term=5, commit=9, context=b"\x00\x07")
    env = wrap(m, 123_456_789, echo_stamp=111, echo_commit=8)
    back = from_proto(to_proto(env))
    assert isinstance(back, StampedMessage) and back == env
    assert (stamp_of(back), echo_of(back), applied_of(back)) == (123_456_789, (111, 8), 0)
    resp = from_proto(to_proto(wrap(Message(MessageType.APP_RESP, to=1, frm=2, term=5, index=9), 42, applied=7)))
    assert (stamp_of(resp), echo_of(resp), applied_of(resp)) == (42, None, 7)
    plain = from_proto(to_proto(Message(MessageType.APP, to=2, frm=1, term=5, entries=[Entry(5, 10, data=b"x")])))
    assert (stamp_of(plain), echo_of(plain), applied_of(plain)) == (0, None, 0)
    assert plain.entries == [Entry(5, 10, data=b"x")]


def test_wrapping_shares_the_raft_fields() -> None:
    m = Message(MessageType.APP, to=3, frm=1, term=2, index=4, log_term=2, entries=[Entry(2, 5)], commit=4)
    env = wrap(m, 1)
    assert all(getattr(env, f.name) == getattr(m, f.name) for f in dataclasses.fields(Message))
    assert env.entries is m.entries
