"""A follower the leader has not heard from for a critical period is unreachable, even when no write
has left it behind in entries or seconds (an idle cluster): `kv lag` must not call it `ok`."""

from __future__ import annotations

from raftkv.layers.lag import LagMonitor, LagThresholds

CAUGHT_UP = {2: (5, 6, "replicate", False)}


def test_silence_for_a_critical_period_is_unreachable_and_critical() -> None:
    m = LagMonitor(LagThresholds(critical_entries=100, critical_seconds=2.0))
    m.start_term(now=0.0)
    m.heard_from(2, applied=5, now=1.0)
    lags, tr = m.compute(CAUGHT_UP, 5, 5, now=2.5)
    assert not lags[0].unreachable and not lags[0].critical and tr == []
    lags, tr = m.compute(CAUGHT_UP, 5, 5, now=3.5)  # 2.5 s of silence, nothing to replicate
    assert lags[0].unreachable and lags[0].critical and [(t.id, t.critical) for t in tr] == [(2, True)]
    m.heard_from(2, applied=5, now=3.6)
    lags, tr = m.compute(CAUGHT_UP, 5, 5, now=3.7)
    assert not lags[0].unreachable and not lags[0].critical and [(t.id, t.critical) for t in tr] == [(2, False)]


def test_never_heard_from_is_unreachable_after_a_critical_period_of_leadership() -> None:
    m = LagMonitor(LagThresholds(critical_entries=100, critical_seconds=2.0))
    m.start_term(now=10.0)
    lags, _ = m.compute({3: (0, 1, "probe", False)}, 0, 0, now=11.0)  # a new leader has not heard yet
    assert not lags[0].unreachable and lags[0].last_contact_seconds is None
    lags, _ = m.compute({3: (0, 1, "probe", False)}, 0, 0, now=12.5)
    assert lags[0].unreachable and lags[0].critical


def test_contact_from_an_earlier_leadership_gets_the_same_grace() -> None:
    m = LagMonitor(LagThresholds(critical_entries=100, critical_seconds=2.0))
    m.heard_from(2, applied=5, now=1.0)
    m.start_term(now=50.0)
    lags, _ = m.compute(CAUGHT_UP, 5, 5, now=51.0)
    assert not lags[0].unreachable and lags[0].last_contact_seconds == 50.0
    lags, _ = m.compute(CAUGHT_UP, 5, 5, now=52.5)
    assert lags[0].unreachable
