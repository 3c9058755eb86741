"""Dating a leader's TimeoutNow on the target (server/transfer_guard.py): one that sat in a buffer longer
than the leader waits for a transfer is dropped, whatever the offset between the two machines' clocks."""

from __future__ import annotations

from raftkv.core import MessageType
from raftkv.server.transfer_guard import TransferGuard
from raftkv.transport.envelope import StampedMessage

MS = 1_000_000
OFFSET = -7_000_000 * MS  # the target's monotonic clock reads 7000 s less than the leader's
LEADER, TERM = 1, 4


def _msg(kind: MessageType, sent_ns: int, term: int = TERM) -> StampedMessage:
    return StampedMessage(kind, frm=LEADER, to=2, term=term, stamp=sent_ns)


def _heartbeats(guard: TransferGuard, start_ns: int, count: int, delay_ns: int, every_ns: int = 50 * MS) -> int:
    t = start_ns
    for _ in range(count):
        assert guard.check(_msg(MessageType.HEARTBEAT, t), t + OFFSET + delay_ns) is None
        t += every_ns
    return t


def test_a_timeout_now_delivered_promptly_is_kept() -> None:
    guard = TransferGuard(max_delay_s=0.2)
    t = _heartbeats(guard, 10_000 * MS, 20, delay_ns=1 * MS)
    assert guard.check(_msg(MessageType.TIMEOUT_NOW, t), t + OFFSET + 3 * MS) is None
    assert guard.check(_msg(MessageType.TIMEOUT_NOW, t), t + OFFSET + 150 * MS) is None
    assert guard.dropped == 0


def test_a_timeout_now_that_waited_out_a_pause_is_dropped() -> None:
    guard = TransferGuard(max_delay_s=0.2)
    t = _heartbeats(guard, 10_000 * MS, 20, delay_ns=1 * MS)
    # The target is paused; the leader keeps sending heartbeats for 3 s, then a TimeoutNow, then more
    # heartbeats. At resume (10 s later) they are all delivered at once, in order.
    resume = t + 13_000 * MS + OFFSET
    queued = []
    for i in range(60):
        queued.append(_msg(MessageType.HEARTBEAT, t + i * 50 * MS))
    queued.append(_msg(MessageType.TIMEOUT_NOW, t + 3_000 * MS))
    queued += [_msg(MessageType.HEARTBEAT, t + 3_000 * MS + i * 50 * MS) for i in range(1, 100)]
    verdicts = [guard.check(m, resume + i * 10_000) for i, m in enumerate(queued)]
    late = [v for m, v in zip(queued, verdicts, strict=True) if m.type == MessageType.TIMEOUT_NOW]
    assert late[0] is not None and late[0] > 9.9
    assert guard.dropped == 1
    assert all(v is None for m, v in zip(queued, verdicts, strict=True) if m.type != MessageType.TIMEOUT_NOW)


def test_the_offset_estimate_is_per_leader_and_term_and_allows_for_clock_rate_drift() -> None:
    guard = TransferGuard(max_delay_s=0.2)
    t = _heartbeats(guard, 10_000 * MS, 5, delay_ns=1 * MS)
    # A new term (maybe a leader restarted on another machine, another offset): judged on its own.
    other = StampedMessage(MessageType.TIMEOUT_NOW, frm=LEADER, to=2, term=TERM + 1, stamp=t)
    assert guard.check(other, t + OFFSET + 5_000 * MS) is None  # nothing known of term 5: passed on
    # An hour later the clocks' rates have drifted apart by 50 ppm (180 ms): still a prompt TimeoutNow.
    hour = 3_600_000 * MS
    t2 = _heartbeats(guard, t + hour, 5, delay_ns=1 * MS + 180 * MS)
    assert guard.check(_msg(MessageType.TIMEOUT_NOW, t2), t2 + OFFSET + 181 * MS + 2 * MS) is None


def test_unstamped_messages_are_passed_on() -> None:
    guard = TransferGuard(max_delay_s=0.2)
    _heartbeats(guard, 10_000 * MS, 3, delay_ns=1 * MS)
    assert guard.check(_msg(MessageType.TIMEOUT_NOW, 0), 99_999_999 * MS) is None
