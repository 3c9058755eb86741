"""A Raft message in its host envelope: the core's message (Raft fields only) plus what the hosts put
beside it for themselves, carried on the wire in the same RaftMessage (codec.py, fields 13-16).

- `stamp`: the sender host's monotonic time when it handed the message over. A follower stamps each
  APP_RESP / HEARTBEAT_RESP (its staleness proof starts there); a leader stamps HEARTBEAT, APP and
  TIMEOUT_NOW (so a transfer's target can tell a TimeoutNow that sat in a buffer too long).
- `echo_stamp`, `echo_commit`: on a leader's APP / HEARTBEAT, the newest stamp of the target that a
  quorum-confirmed round vouches for, with the leader's commit index at that round's send time: every
  write acknowledged before the follower's own time `echo_stamp` has an index <= `echo_commit`
  (server/stamps.py, DESIGN.md §5 "Staleness proof").
- `applied`: the sender's applied index on responses (the leader's replay lag, server/lag.py).

The core neither sets nor reads any of them: it is handed the envelope as the message it is (a subclass),
and makes plain messages, which the host wraps as it sends them."""

from __future__ import annotations

from dataclasses import dataclass

from ..core import Message


@dataclass(slots=True)
class StampedMessage(Message):
    stamp: int = 0
    echo_stamp: int = 0
    echo_commit: int = 0
    applied: int = 0


def wrap(m: Message, stamp: int = 0, echo_stamp: int = 0, echo_commit: int = 0, applied: int = 0) -> StampedMessage:
    """`m` in an envelope with these stamps (its Raft fields shared, not copied)."""
    return StampedMessage(m.type, m.to, m.frm, m.term, m.log_term, m.index, m.entries, m.commit, m.reject,
                          m.reject_hint, m.snapshot, m.context, m.data_floor, stamp, echo_stamp, echo_commit,
                          applied)


def stamp_of(m: Message) -> int:
    return m.stamp if isinstance(m, StampedMessage) else 0


def applied_of(m: Message) -> int:
    return m.applied if isinstance(m, StampedMessage) else 0


def echo_of(m: Message) -> tuple[int, int] | None:
    """(echo_stamp, echo_commit) if the message carries an echo."""
    if isinstance(m, StampedMessage) and m.echo_stamp:
        return m.echo_stamp, m.echo_commit
    return None
