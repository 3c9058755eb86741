"""Admission control's watermarks and pressure level, over a stand-in host that holds only what
admission reads (the real host is exercised in tests/integration/test_overload.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from raftkv.layers.admission import Admission, Level, Limits, Overloaded, quorum_queue


def _host() -> SimpleNamespace:
    log = SimpleNamespace(committed=0)
    return SimpleNamespace(node=SimpleNamespace(raft_log=log, conf=SimpleNamespace(voters=frozenset({1}))),
                           applied=0, is_leader=True, waiters=SimpleNamespace(durable_waiting=0),
                           transport=SimpleNamespace(), cfg=SimpleNamespace(id=1))


def test_refuses_at_the_high_mark_and_accepts_again_only_at_the_low_mark() -> None:
    host = _host()
    adm = Admission(host, Limits(unapplied=10, low_ratio=0.5))
    # `unapplied` moves only in host rounds: each change here is followed by the round's evaluation.
    host.node.raft_log.committed = 9
    adm.evaluate()
    adm.check_write()  # 9 < 10
    host.node.raft_log.committed = 10
    adm.evaluate()
    with pytest.raises(Overloaded) as e:
        adm.check_write()
    assert e.value.resource == "unapplied" and e.value.high == 10 and e.value.pushback_ms > 0
    host.applied = 3  # 7 unapplied: under the high mark, above the low one: still refused (hysteresis)
    adm.evaluate()
    with pytest.raises(Overloaded):
        adm.check_write()
    assert adm.level == Level.RED
    host.applied = 5  # 5 = the low mark: accepted again
    adm.evaluate()
    adm.check_write()
    assert adm.level == Level.YELLOW  # at 50 % of the high mark
    host.applied = 10
    assert adm.evaluate() == Level.GREEN
    assert adm.marks["unapplied"].refused == 2


def test_reads_have_their_own_budget() -> None:
    host = _host()
    adm = Admission(host, Limits(ack_waiters=2, read_waiters=2))
    host.waiters.durable_waiting = 2
    with pytest.raises(Overloaded):
        adm.check_write()
    with adm.read():  # a write overload does not stop reads
        with adm.read():
            with pytest.raises(Overloaded) as e:
                adm.check_read()
            assert e.value.resource == "read_waiters" and e.value.budget == "read"
    host.waiters.durable_waiting = 0
    adm.check_write()
    adm.check_read()


def test_writes_in_flight_are_counted_until_answered_even_when_they_fail() -> None:
    adm = Admission(_host(), Limits(proposals=2, proposal_bytes=100))
    with adm.writes(1, 10):
        with pytest.raises(RuntimeError):
            with adm.writes(1, 10):
                raise RuntimeError("the write failed")
        with adm.writes(1, 10):
            with pytest.raises(Overloaded) as e:
                adm.check_write()
            assert e.value.resource == "proposals"
    assert adm.proposals == 0 and adm.proposal_bytes == 0
    with adm.writes(1, 100):  # bytes: a 100-byte write fills the byte budget
        with pytest.raises(Overloaded) as e:
            adm.check_write()
        assert e.value.resource == "proposal_bytes"


def test_level_bands_and_one_log_per_transition() -> None:
    host = _host()
    adm = Admission(host, Limits(unapplied=100))
    for committed, level in ((10, Level.GREEN), (49, Level.GREEN), (50, Level.YELLOW), (79, Level.YELLOW),
                             (80, Level.RED), (85, Level.RED), (20, Level.GREEN)):
        host.node.raft_log.committed = committed
        assert adm.evaluate() == level, committed
    assert adm.transitions == 3  # GREEN -> YELLOW -> RED -> GREEN


def test_a_commit_waits_for_the_quorum_th_least_backed_up_follower() -> None:
    assert quorum_queue([500, 0], 3) == 0  # one stopped follower of three does not stop writes
    assert quorum_queue([500, 400], 3) == 400
    assert quorum_queue([500, 0, 300, 10], 5) == 10
    assert quorum_queue([], 1) == 0


def test_another_resource_can_be_watched() -> None:
    adm = Admission(_host(), Limits(extra={"watch_buffers": 3}))
    held = [0]
    adm.add_resource("watch_buffers", lambda: held[0], 1000, budget="read")
    held[0] = 3
    with pytest.raises(Overloaded) as e:
        adm.check_read()
    assert e.value.resource == "watch_buffers"
    adm.check_write()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _busy_window(adm: Admission, clock: _Clock, in_flight: int, answered: int) -> None:
    """One estimation window in which `in_flight` writes stay in flight and `answered` are answered."""
    adm.proposals = in_flight
    clock.now += 0.101
    adm.evaluate()  # closes the window before, opens this one
    clock.now += 0.1
    adm.delay.answered += answered
    adm.evaluate()


def test_queue_delay_refuses_once_the_writes_in_flight_would_wait_too_long(monkeypatch: pytest.MonkeyPatch) -> None:
    from raftkv.layers import queue_delay

    clock = _Clock()
    monkeypatch.setattr(queue_delay.time, "monotonic", clock)
    adm = Admission(_host(), Limits(queue_delay_ms=100, low_ratio=0.5))
    adm.proposals = 500
    adm.check_write()  # no answer rate measured yet: nothing known, not refused
    _busy_window(adm, clock, 500, 100)  # 1,000 answered/s while busy
    assert adm.delay.rate == pytest.approx(1000.0, rel=0.01)
    with pytest.raises(Overloaded):  # 500 in flight: 500 ms to drain
        adm.check_write()
    adm.proposals = 40  # drained to its low mark
    adm.check_write()
    adm.proposals = 99  # 99 ms to drain
    adm.check_write()
    adm.proposals = 100
    with pytest.raises(Overloaded) as e:
        adm.check_write()
    assert e.value.resource == "queue_delay_ms" and e.value.usage == 100 and e.value.high == 100
    adm.proposals = 60  # under the high mark, over the low one (50 ms): still refused
    with pytest.raises(Overloaded):
        adm.check_write()
    adm.proposals = 50
    adm.check_write()
    assert "queue_delay_ms" in adm.usage()


def test_queue_delay_never_refuses_a_lone_write_nor_learns_from_idle_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    from raftkv.layers import queue_delay

    clock = _Clock()
    monkeypatch.setattr(queue_delay.time, "monotonic", clock)
    adm = Admission(_host(), Limits(queue_delay_ms=1))
    _busy_window(adm, clock, 3, 1)  # a trickle (too few in flight to measure what the node can do)
    assert adm.delay.rate == 0.0
    _busy_window(adm, clock, 400, 2)  # busy but slow: 20 answered/s
    assert adm.delay.rate == pytest.approx(20.0, rel=0.01)
    for in_flight in (0, 1, queue_delay.MIN_IN_FLIGHT - 1):  # a 1 ms mark, a slow node: still admitted
        adm.proposals = in_flight
        adm.check_write()
    adm.proposals = queue_delay.MIN_IN_FLIGHT
    with pytest.raises(Overloaded):
        adm.check_write()
    adm.proposals = 0
    adm.check_write()
    assert Admission(_host(), Limits(queue_delay_ms=0)).marks.keys().isdisjoint({"queue_delay_ms"})


def test_queue_delay_rate_is_per_busy_second_even_when_the_pipeline_empties_for_instants(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A leader that commits many batches in one round drains to 0 in flight for an instant under load:
    such a window still counts (rate per busy second); a window mostly idle does not."""
    from raftkv.layers import queue_delay

    clock = _Clock()
    monkeypatch.setattr(queue_delay.time, "monotonic", clock)
    adm = Admission(_host(), Limits(queue_delay_ms=100))
    clock.now += 0.2
    adm.evaluate()  # a fresh window
    for in_flight, seconds, answered in ((500, 0.03, 0), (0, 0.01, 40), (500, 0.03, 0), (0, 0.01, 40),
                                         (500, 0.03, 0)):
        adm.proposals = in_flight
        adm.evaluate()
        clock.now += seconds
        adm.delay.answered += answered
    adm.proposals = 0
    adm.evaluate()  # 0.11 s, 0.09 s of it busy, 80 answered
    assert adm.delay.rate == pytest.approx(80 / 0.09, rel=0.01)
    for in_flight, seconds in ((500, 0.03), (0, 0.09)):  # busy a quarter of the window: not taken
        adm.proposals = in_flight
        adm.evaluate()
        clock.now += seconds
        adm.delay.answered += 1000
    adm.evaluate()
    assert adm.delay.rate == pytest.approx(80 / 0.09, rel=0.01)
