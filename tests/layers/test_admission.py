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
