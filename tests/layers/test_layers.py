"""The request layers as plain logic: session tokens, durability waiters, staleness proofs, lag."""

from __future__ import annotations

import asyncio

import pytest

from raftkv.layers.acks import AckLevel, DurabilityWaiters
from raftkv.layers.lag import AppendClock, LagMonitor, LagThresholds
from raftkv.layers.reads import StalenessBound, prove_staleness, satisfies
from raftkv.layers.session import InvalidToken, SessionToken, newest

CLUSTER = b"c" * 16


def test_session_token_round_trip_and_cluster_binding() -> None:
    tok = SessionToken(index=42, term=7)
    assert SessionToken.decode(tok.encode(CLUSTER), CLUSTER) == tok
    assert SessionToken.from_text(tok.text(CLUSTER), CLUSTER) == tok
    with pytest.raises(InvalidToken, match="does not belong to this cluster"):
        SessionToken.decode(tok.encode(CLUSTER), b"d" * 16)
    with pytest.raises(InvalidToken, match="bytes"):
        SessionToken.decode(b"short", CLUSTER)
    with pytest.raises(InvalidToken):
        SessionToken.from_text("!!!not-base64!!!", CLUSTER)


def test_newest_token_never_goes_backwards() -> None:
    a, b = SessionToken(10, 2), SessionToken(12, 2)
    assert newest(a, b) == b and newest(b, a) == b
    assert newest(None, a) == a and newest(a, None) == a


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


def test_sync_waits_for_every_member_then_times_out_with_confirmations() -> None:
    async def scenario() -> None:
        w = DurabilityWaiters()
        fut = w.add(10, AckLevel.SYNC, frozenset({1, 2, 3}), 3, deadline=5.0, match={1: 10, 2: 9, 3: 0}, now=0.0)
        assert not fut.done()
        w.update({1: 10, 2: 10, 3: 0}, now=1.0)
        assert not fut.done()
        w.update({1: 10, 2: 10, 3: 0}, now=5.0)
        out = fut.result()
        assert out.timed_out and out.confirmed_by == [1, 2] and out.level == AckLevel.SYNC
        ok = w.add(11, AckLevel.SYNC, frozenset({1, 2, 3}), 3, deadline=9.0, match={1: 11, 2: 11, 3: 11}, now=6.0)
        assert ok.done() and not ok.result().timed_out and ok.result().confirmed_by == [1, 2, 3]

    run(scenario())


def test_semi_sync_degrades_to_majority_on_timeout() -> None:
    async def scenario() -> None:
        w = DurabilityWaiters()
        fut = w.add(5, AckLevel.SEMI_SYNC, frozenset({2, 3}), 1, deadline=1.0, match={1: 5, 2: 4, 3: 4}, now=0.0)
        w.update({1: 5, 2: 4, 3: 4}, now=0.5)
        assert not fut.done()
        w.update({1: 5, 2: 4, 3: 4}, now=1.0)
        out = fut.result()
        assert out.degraded and out.level == AckLevel.MAJORITY and not out.timed_out
        fut2 = w.add(6, AckLevel.SEMI_SYNC, frozenset({2, 3}), 1, deadline=3.0, match={1: 6, 2: 4, 3: 4}, now=2.0)
        w.update({1: 6, 2: 6, 3: 4}, now=2.1)
        assert fut2.result().degraded is False and fut2.result().level == AckLevel.SEMI_SYNC
        assert len(w) == 0

    run(scenario())


def test_staleness_proof_needs_applied_through_echoed_commit() -> None:
    now = 10_000_000_000
    stamp = now - 300_000_000  # 300 ms ago on our own clock
    behind = prove_staleness((stamp, 50), applied=40, now_ns=now)
    assert behind.staleness_ms is None and behind.lag_entries == 10
    caught_up = prove_staleness((stamp, 50), applied=50, now_ns=now)
    assert caught_up.staleness_ms == pytest.approx(300.0)
    assert satisfies(caught_up, StalenessBound(max_staleness_ms=500), 1000)
    assert not satisfies(caught_up, StalenessBound(max_staleness_ms=200), 1000)
    assert not satisfies(behind, StalenessBound(max_staleness_ms=10_000), 1000)
    assert satisfies(behind, StalenessBound(max_lag_entries=10), 1000)
    assert not satisfies(behind, StalenessBound(max_lag_entries=9), 1000)
    # A lag bound measured against an old confirmation proves nothing.
    assert not satisfies(behind, StalenessBound(max_lag_entries=10), 100)
    assert prove_staleness(None, 50, now).staleness_ms is None
    with pytest.raises(ValueError):
        StalenessBound().validate()


def test_append_clock_ages_and_bytes() -> None:
    c = AppendClock()
    c.record(1, [10, 20, 30], now=1.0)
    c.record(4, [40], now=2.0)
    assert c.time_of(1) == 1.0 and c.time_of(4) == 2.0 and c.time_of(5) is None
    assert c.bytes_after(0) == 100 and c.bytes_after(2) == 70 and c.bytes_after(4) == 0
    c.forget_through(2)
    assert c.bytes_after(2) == 70 and c.bytes_after(0) == 70  # forgotten entries count as held
    c.record(4, [5], now=3.0)  # a new leader's log replaced entry 4
    assert c.bytes_after(3) == 5 and c.time_of(4) == 3.0


def test_lag_monitor_reports_crossings_once() -> None:
    m = LagMonitor(LagThresholds(critical_entries=5, critical_seconds=100))
    m.clock.record(1, [100] * 10, now=0.0)
    m.heard_from(2, applied=2, now=1.0)
    lags, tr = m.compute({2: (3, 4, "replicate", False), 3: (10, 11, "replicate", False)}, 10, 10, now=4.0)
    f2 = lags[0]
    assert (f2.id, f2.lag_entries, f2.lag_bytes, f2.applied) == (2, 7, 700, 2)
    assert f2.flush_lag_seconds == 4.0 and f2.replay_lag_seconds == 4.0 and f2.last_contact_seconds == 3.0
    assert f2.critical and [t.id for t in tr] == [2] and tr[0].critical
    _, tr = m.compute({2: (3, 4, "replicate", False), 3: (10, 11, "replicate", False)}, 10, 10, now=5.0)
    assert tr == []
    lags, tr = m.compute({2: (10, 11, "replicate", False), 3: (10, 11, "replicate", False)}, 10, 10, now=6.0)
    assert not lags[0].critical and lags[0].lag_entries == 0 and lags[0].flush_lag_seconds == 0.0
    assert [(t.id, t.critical) for t in tr] == [(2, False)]


def test_a_new_leadership_does_not_date_lag_from_an_earlier_term() -> None:
    m = LagMonitor(LagThresholds(critical_entries=3, critical_seconds=5))
    m.heard_from(2, applied=5, now=0.5)
    m.clock.record(1, [10] * 5, now=0.0)  # appended while leader of an earlier term, then deposed
    m.start_term(now=100.0)
    m.clock.record(6, [10], now=100.0)  # leader again: its first entry of the new term
    # Right after the election the follower's match (0) is the leader's guess, not yet an answer.
    lags, tr = m.compute({2: (0, 6, "probe", False)}, 6, 5, now=101.0)
    assert lags[0].flush_lag_seconds == 1.0 and lags[0].lag_entries == 6 and not lags[0].critical and tr == []
    assert lags[0].lag_bytes == 10  # bytes of entries the earlier term wrote are not known to be missing
    assert lags[0].last_contact_seconds == 100.5 and lags[0].applied == 0  # what was heard stays true
    # Still silent after a critical period: now it is critical.
    lags, tr = m.compute({2: (0, 6, "probe", False)}, 6, 5, now=106.0)
    assert lags[0].critical and [(t.id, t.critical) for t in tr] == [(2, True)]


def test_a_follower_that_answered_in_this_leadership_is_judged_at_once() -> None:
    m = LagMonitor(LagThresholds(critical_entries=3, critical_seconds=5))
    m.start_term(now=100.0)
    m.clock.record(1, [10] * 6, now=100.0)
    m.heard_from(2, applied=1, now=100.2)  # it answered: its match of 1 is a fact
    lags, tr = m.compute({2: (1, 2, "replicate", False)}, 6, 6, now=100.5)
    assert lags[0].lag_entries == 5 and lags[0].critical and [t.id for t in tr] == [2]


def test_semi_sync_status_reports_each_transition_once() -> None:
    from raftkv.layers.acks import SemiSyncStatus

    s = SemiSyncStatus()
    assert [s.observe(d, i, 1) for i, d in enumerate((False, True, True, True, False, False, True))] == \
        [False, True, False, False, True, False, True]
    assert s.degraded and s.recover_at == 6


def test_semi_sync_recovers_once_replicas_reach_the_write_that_degraded() -> None:
    from raftkv.layers.acks import SemiSyncStatus

    s = SemiSyncStatus()
    members = frozenset({2, 3})
    assert not s.caught_up({2: 50, 3: 50}, members)  # not degraded: nothing to recover from
    s.observe(True, 10, 2)
    assert not s.caught_up({2: 10, 3: 9}, members) and s.degraded  # one of the two needed is behind
    assert s.caught_up({2: 10, 3: 12}, members) and not s.degraded
    assert not s.caught_up({2: 10, 3: 12}, members)  # the transition is reported once
