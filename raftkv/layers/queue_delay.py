"""The queue-delay watermark of admission control: how long a write admitted now would wait for its answer.

The count and byte marks bound memory, not latency: 4096 writes in flight at a few hundred applied per
second is seconds of queue, and every accepted write waits that long. What a client of a well-run store
expects under overload is a refusal, not seconds of queue, so this resource is a delay, in milliseconds:

    queue_delay_ms = writes in flight on this node / writes this node answers per second

(Little's law: the time the writes ahead of a new one take to drain at the rate the node answers them).
It is predictive, unlike the sojourn of answered writes or the age of the oldest waiting one: those are
only known once a write has waited, so at `k` times the capacity they reach the target only after `k`
times the target's worth of writes has been admitted, and each of those then waits `k` times the target.
Refusing at a delay of `high` ms keeps about `high` ms x the answer rate in flight, i.e. it is a
concurrency limit that follows the node's measured throughput (as Netflix's concurrency-limits or
CoDel's target delay, without dropping admitted work).

The answer rate is measured in windows of `WINDOW_S` while the node stays busy (at least `MIN_IN_FLIGHT`
writes in flight for the whole window: then the rate is what the node can do with that many, not what
clients happen to offer) and smoothed (EWMA). Below `MIN_IN_FLIGHT` writes in flight the usage is 0: a
lone write on an idle node is never refused, however slow the last busy period was. Until a first busy
window has been measured the usage is 0 too (nothing is known yet, and the count marks still hold)."""

from __future__ import annotations

import time

WINDOW_S = 0.1
MIN_IN_FLIGHT = 16
EWMA_ALPHA = 0.3


class QueueDelay:
    """The answer-rate estimate behind the `queue_delay_ms` resource. The hot path costs one integer add
    per admitted request (`answered`); the rate is re-estimated after host rounds (`on_round`)."""

    __slots__ = ("answered", "rate", "_ms_per_write", "_window_start", "_window_answered", "_window_min")

    def __init__(self) -> None:
        self.answered = 0
        """Writes answered (applied, failed or abandoned) since start; bumped by Admission.writes."""
        self.rate = 0.0
        """Smoothed writes answered per second while busy (0: not measured yet)."""
        self._ms_per_write = 0.0
        self._window_start = time.monotonic()
        self._window_answered = 0
        self._window_min = 0

    def usage_ms(self, in_flight: int) -> int:
        """The expected wait of a write admitted now, in milliseconds (0 when idle or not yet measured)."""
        if in_flight < MIN_IN_FLIGHT:
            return 0
        return int(in_flight * self._ms_per_write)

    def on_round(self, in_flight: int) -> None:
        """After a host round: note the fewest writes in flight seen this window; once the window is
        over, take its answer rate if it stayed busy throughout."""
        if in_flight < self._window_min:
            self._window_min = in_flight
        now = time.monotonic()
        elapsed = now - self._window_start
        if elapsed < WINDOW_S:
            return
        done = self.answered - self._window_answered
        if self._window_min >= MIN_IN_FLIGHT and done > 0:
            sample = done / elapsed
            self.rate = sample if self.rate <= 0.0 else self.rate + EWMA_ALPHA * (sample - self.rate)
            self._ms_per_write = 1000.0 / self.rate
        self._window_start = now
        self._window_answered = self.answered
        self._window_min = in_flight
