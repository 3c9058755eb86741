"""The client's circuit breaker, retry budget and backoff, with time passed in."""

from __future__ import annotations

import random

from raftkv.client.resilience import (
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    RetryBudget,
    RetrySettings,
    full_jitter,
    pushback_seconds,
)


def test_opens_after_consecutive_failures_probes_once_after_the_cooldown_and_closes_on_success() -> None:
    b = CircuitBreaker(BreakerSettings(failures=3, cooldown_s=1.0))
    for t in range(2):
        b.failure(float(t))
    assert b.state == BreakerState.CLOSED and b.allow(2.0)
    b.failure(2.0)
    assert b.state == BreakerState.OPEN and not b.allow(2.5) and b.reopens_in(2.5) == 0.5
    assert b.allow(3.0) and b.state == BreakerState.HALF_OPEN  # the probe
    assert not b.allow(3.1)  # one probe at a time
    b.failure(3.2)  # the probe failed: open again, for a fresh cool-down
    assert b.state == BreakerState.OPEN and not b.allow(4.0) and b.allow(4.2)
    b.success()
    assert b.state == BreakerState.CLOSED and b.allow(4.3) and b.stats()["opened"] == 2


def test_opens_on_a_failure_rate_without_a_run_of_failures() -> None:
    b = CircuitBreaker(BreakerSettings(failures=100, failure_rate=0.5, window=10, min_calls=10))
    for i in range(9):
        (b.failure(0.0) if i % 2 else b.success())
    assert b.state == BreakerState.CLOSED  # fewer calls than min_calls
    b.failure(0.0)  # 5 of the last 10 failed
    assert b.state == BreakerState.OPEN


def test_retry_budget_caps_retries_at_a_share_of_requests() -> None:
    now = [0.0]
    budget = RetryBudget(RetrySettings(ratio=0.1, reserve_per_s=0.0, cap=5.0), clock=lambda: now[0])
    made = 0
    for _ in range(1000):
        budget.request()
        if budget.try_spend():
            made += 1
    assert made <= 5 + 100  # the initial tokens plus a tenth of the requests
    assert budget.refused == 1000 - made
    now[0] = 10.0
    assert not budget.try_spend()  # no reserve: time alone adds nothing
    timed = RetryBudget(RetrySettings(ratio=0.0, reserve_per_s=2.0, cap=3.0), clock=lambda: now[0])
    assert [timed.try_spend() for _ in range(4)] == [True, True, True, False]
    now[0] = 11.0
    assert timed.try_spend() and timed.try_spend() and not timed.try_spend()


def test_full_jitter_and_pushback() -> None:
    s = RetrySettings(backoff_base_s=0.1, backoff_cap_s=1.0)
    rng = random.Random(7)
    draws = [full_jitter(n, s, rng) for n in range(12) for _ in range(20)]
    assert all(0.0 <= d <= 1.0 for d in draws) and min(draws) < 0.05
    assert all(full_jitter(0, s, rng) <= 0.1 for _ in range(50))
    assert pushback_seconds({"retry_after_ms": "250"}, s) == 0.25
    assert pushback_seconds({"retry_after_ms": "999999"}, s) == s.pushback_max_s
    assert pushback_seconds({}, s) is None
