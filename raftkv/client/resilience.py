"""What keeps a client from hammering a sick cluster (DESIGN.md §6): a circuit breaker per endpoint, a
retry budget per client, and exponential backoff with full jitter that honours the server's pushback.

- **Circuit breaker** (CLOSED -> OPEN -> HALF_OPEN): an endpoint that failed `failures` times in a row,
  or `failure_rate` of its last `window` calls (with at least `min_calls` of them), is OPEN: it gets no
  calls for `cooldown_s`. Then it is HALF_OPEN: one call goes (a probe); success closes the breaker,
  failure opens it again for another cool-down. Only what says the node is sick counts as a failure: a
  connection that failed or did not get ready, a try that ran out of time there, an OVERLOADED refusal.
  A redirect (NOT_LEADER) or an error about the request itself is an answer, and counts as a success.
- **Retry budget** (Finagle's RetryBudget, in the spirit of gRPC retry throttling): every request
  deposits `ratio` of a token, time deposits `reserve_per_s` tokens a second (so a quiet client still
  rides out an election), up to `cap`; each retry spends one. With no token left the call gives up with
  its last error instead of retrying, so retries stay under about `ratio` of requests when the whole
  cluster is sick. Moving on to the leader named by a NOT_LEADER answer is not a retry.
- **Backoff**: full jitter, uniform in [0, min(cap, base * 2**attempt)]; a refusal that names a retry-after
  (`grpc-retry-pushback-ms`, mirrored in the ErrorInfo's `retry_after_ms`) waits that long instead.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class BreakerState(Enum):
    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failures: int = 5
    """Consecutive failures that open the breaker."""
    failure_rate: float = 0.5
    """Share of failed calls among the last `window` (at least `min_calls`) that opens it."""
    window: int = 20
    min_calls: int = 10
    cooldown_s: float = 1.0
    """How long an open breaker lets nothing through before one probe."""


@dataclass(frozen=True, slots=True)
class RetrySettings:
    ratio: float = 0.2
    """Tokens each request deposits: retries stay under about this share of requests."""
    reserve_per_s: float = 5.0
    """Tokens time deposits per second, whatever the traffic."""
    cap: float = 20.0
    backoff_base_s: float = 0.025
    backoff_cap_s: float = 1.0
    pushback_max_s: float = 5.0
    """A server's retry-after hint is honoured up to this long."""


class CircuitBreaker:
    """One endpoint's breaker. Thread-safe (the sync client may be shared by threads)."""

    def __init__(self, settings: BreakerSettings) -> None:
        self.settings = settings
        self.state = BreakerState.CLOSED
        self.consecutive = 0
        self.recent: deque[bool] = deque(maxlen=settings.window)  # True: a failure
        self.opened_at = 0.0
        self.opened = 0
        """How many times it opened."""
        self.successes = 0
        self.failures = 0
        self.rejected = 0
        """Calls not sent because the breaker was open."""
        self._probing = False
        self._probe_at = 0.0
        self._lock = threading.Lock()

    def reopens_in(self, now: float) -> float:
        """Seconds until an open breaker lets a probe through (0 when it would now)."""
        if self.state != BreakerState.OPEN:
            return 0.0
        return max(0.0, self.opened_at + self.settings.cooldown_s - now)

    def allow(self, now: float) -> bool:
        """May a call go to this endpoint now? An open breaker past its cool-down becomes half-open and
        lets exactly one probe through."""
        with self._lock:
            if self.state == BreakerState.CLOSED:
                return True
            if self.state == BreakerState.OPEN:
                if now < self.opened_at + self.settings.cooldown_s:
                    return False
                self.state = BreakerState.HALF_OPEN
                self._probing = False
            if self._probing and now - self._probe_at < self.settings.cooldown_s:
                return False  # one probe at a time (a probe never reported is given up after a cool-down)
            self._probing = True
            self._probe_at = now
            return True

    def reject(self) -> None:
        with self._lock:
            self.rejected += 1

    def success(self) -> None:
        with self._lock:
            self.successes += 1
            self.consecutive = 0
            self.recent.append(False)
            if self.state != BreakerState.CLOSED:
                self.state = BreakerState.CLOSED
                self.recent.clear()
            self._probing = False

    def failure(self, now: float) -> None:
        with self._lock:
            self.failures += 1
            self.consecutive += 1
            self.recent.append(True)
            s = self.settings
            rate_tripped = len(self.recent) >= s.min_calls and sum(self.recent) / len(self.recent) >= s.failure_rate
            if self.state == BreakerState.HALF_OPEN or self.consecutive >= s.failures or rate_tripped:
                if self.state != BreakerState.OPEN:
                    self.opened += 1
                self.state = BreakerState.OPEN
                self.opened_at = now
                self._probing = False

    def stats(self) -> dict[str, Any]:
        return {"state": self.state.value, "consecutive_failures": self.consecutive, "failures": self.failures,
                "successes": self.successes, "opened": self.opened, "rejected": self.rejected}


class RetryBudget:
    """Tokens for retries, shared by every call of one client (see the module docstring)."""

    def __init__(self, settings: RetrySettings, clock: Any = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self.tokens = settings.cap
        self._at = clock()
        self.requests = 0
        self.retries = 0
        self.refused = 0
        """Retries not made because the budget was spent."""
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.settings.cap, self.tokens + (now - self._at) * self.settings.reserve_per_s)
        self._at = now

    def request(self) -> None:
        with self._lock:
            self.requests += 1
            self._refill()
            self.tokens = min(self.settings.cap, self.tokens + self.settings.ratio)

    def try_spend(self) -> bool:
        """Take a token for one retry; False (and counted) when none is left."""
        with self._lock:
            self._refill()
            if self.tokens < 1.0:
                self.refused += 1
                return False
            self.tokens -= 1.0
            self.retries += 1
            return True


def full_jitter(attempt: int, settings: RetrySettings, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter (AWS architecture blog): uniform in [0, min(cap, base*2^n)]."""
    r = rng or random
    return r.uniform(0.0, min(settings.backoff_cap_s, settings.backoff_base_s * (2 ** min(attempt, 30))))


def pushback_seconds(metadata: dict[str, str], settings: RetrySettings) -> float | None:
    """The server's retry-after hint of a refusal, in seconds (None if it gave none)."""
    raw = metadata.get("retry_after_ms", "")
    if not raw.isdigit():
        return None
    return min(settings.pushback_max_s, int(raw) / 1000)


@dataclass
class Resilience:
    """A client's breakers (one per endpoint, made on first use) and its retry budget."""

    breaker_settings: BreakerSettings = field(default_factory=BreakerSettings)
    retry_settings: RetrySettings = field(default_factory=RetrySettings)
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)
    budget: RetryBudget = field(init=False)
    unknown_retries: int = 0
    """Numbered (exactly-once) writes retried after an unknown outcome."""

    def __post_init__(self) -> None:
        self.budget = RetryBudget(self.retry_settings)

    def breaker(self, address: str) -> CircuitBreaker:
        b = self.breakers.get(address)
        if b is None:
            b = self.breakers.setdefault(address, CircuitBreaker(self.breaker_settings))
        return b

    def states(self) -> dict[str, str]:
        return {a: b.state.value for a, b in sorted(self.breakers.items())}

    def metrics(self) -> dict[str, Any]:
        """What the client's resilience saw: requests, retries made and refused by the budget, the tokens
        left, and each endpoint's breaker."""
        bud = self.budget
        with bud._lock:
            bud._refill()
            tokens = bud.tokens
        return {"requests": bud.requests, "retries": bud.retries, "retries_refused": bud.refused,
                "retry_tokens": round(tokens, 2), "outcome_unknown_retries": self.unknown_retries,
                "breakers": {a: b.stats() for a, b in sorted(self.breakers.items())}}
