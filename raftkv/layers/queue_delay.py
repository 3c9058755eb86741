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

The answer rate is the writes answered per second of *busy* time: time with at least `MIN_IN_FLIGHT`
writes in flight (by Little's law so many are in flight only when writes queue, so the rate is what the
node can do, not what clients happen to offer). It is taken per window of `WINDOW_S` in which the node
was busy at least `BUSY_SHARE` of the time, and smoothed (EWMA). Requiring the whole window busy would be
wrong: a leader that commits many batches in one round empties its pipeline for an instant under any load,
and only windows in which answers stalled would be taken, so the rate would be biased low and the limit
with it. Below `MIN_IN_FLIGHT` writes in flight the usage is 0: a lone write on an idle node is never
refused, however slow the last busy period was. Until a first busy window has been measured the usage is
0 too (nothing is known yet, and the count marks still hold)."""

from __future__ import annotations

import time

WINDOW_S = 0.1
MIN_IN_FLIGHT = 16
BUSY_SHARE = 0.5
EWMA_ALPHA = 0.3


class QueueDelay:
    """The answer-rate estimate behind the `queue_delay_ms` resource. The hot path costs one integer add
    per admitted request (`answered`); the rate is re-estimated after host rounds (`on_round`)."""

    __slots__ = ("answered", "rate", "_ms_per_write", "_window_start", "_window_answered", "_busy_s",
                 "_last_round", "_last_busy")

    def __init__(self) -> None:
        self.answered = 0
        """Writes answered (applied, failed or abandoned) since start; bumped by Admission.writes."""
        self.rate = 0.0
        """Smoothed writes answered per busy second (0: not measured yet)."""
        self._ms_per_write = 0.0
        now = time.monotonic()
        self._window_start = now
        self._window_answered = 0
        self._busy_s = 0.0
        self._last_round = now
        self._last_busy = False

    def usage_ms(self, in_flight: int) -> int:
        """The expected wait of a write admitted now, in milliseconds (0 when idle or not yet measured)."""
        if in_flight < MIN_IN_FLIGHT:
            return 0
        return int(in_flight * self._ms_per_write)

    def on_round(self, in_flight: int) -> None:
        """After a host round: count the time since the last round as busy if that many writes were in
        flight then; once the window is over, take its rate if it was busy enough."""
        now = time.monotonic()
        if self._last_busy:
            self._busy_s += now - self._last_round
        self._last_round = now
        self._last_busy = in_flight >= MIN_IN_FLIGHT
        elapsed = now - self._window_start
        if elapsed < WINDOW_S:
            return
        done = self.answered - self._window_answered
        if self._busy_s >= BUSY_SHARE * elapsed and done > 0:
            sample = done / self._busy_s
            self.rate = sample if self.rate <= 0.0 else self.rate + EWMA_ALPHA * (sample - self.rate)
            self._ms_per_write = 1000.0 / self.rate
        self._window_start = now
        self._window_answered = self.answered
        self._busy_s = 0.0
