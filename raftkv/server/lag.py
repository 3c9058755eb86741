"""Replication lag as the leader sees it, per follower: in entries, in bytes, and in seconds.

Time lag follows PostgreSQL's flush_lag / replay_lag: the age of the oldest entry the follower does not yet
hold durably (flush), and of the oldest committed entry it has not yet applied (replay). The leader knows
when each entry entered its log; it learns a follower's durable index from the core's progress (match) and
its applied index from the `applied` field the follower's host puts on its responses.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class LagThresholds:
    critical_entries: int = 10_000
    critical_seconds: float = 10.0


@dataclass(slots=True, frozen=True)
class FollowerLag:
    id: int
    match: int
    next: int
    applied: int
    state: str
    is_learner: bool
    lag_entries: int
    lag_bytes: int
    flush_lag_seconds: float
    replay_lag_seconds: float
    last_contact_seconds: float | None
    critical: bool
    unreachable: bool = False
    """Not heard from for `critical_seconds` (or ever, in that long of this leadership): shown as
    unreachable, and critical, even when no write has left it behind."""


@dataclass(slots=True, frozen=True)
class LagTransition:
    id: int
    critical: bool  # True: crossed into critical; False: recovered
    lag: FollowerLag


class AppendClock:
    """When each entry entered the leader's log, and the running total of entry bytes through it.

    Kept only for entries some follower may still lack; the oldest are dropped once every follower has
    them (or beyond `max_entries`, when the oldest kept one stands in for older ones)."""

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self._index: deque[int] = deque()
        self._time: deque[float] = deque()
        self._through: deque[int] = deque()  # total bytes appended through this entry
        self._base = 0  # total bytes appended before the oldest kept entry
        self._max = max_entries

    @property
    def _total(self) -> int:
        return self._through[-1] if self._through else self._base

    def record(self, first_index: int, sizes: list[int], now: float) -> None:
        if self._index and first_index <= self._index[-1]:
            self.truncate_from(first_index)
        total = self._total
        for i, size in enumerate(sizes):
            total += size
            self._index.append(first_index + i)
            self._time.append(now)
            self._through.append(total)
        while len(self._index) > self._max:
            self._pop_left()

    def truncate_from(self, index: int) -> None:
        while self._index and self._index[-1] >= index:
            self._index.pop()
            self._time.pop()
            self._through.pop()

    def clear(self) -> None:
        """Forget every entry: the times of another leadership's appends do not date this one's lag."""
        self._index.clear()
        self._time.clear()
        self._through.clear()
        self._base = 0

    def forget_through(self, index: int) -> None:
        while self._index and self._index[0] <= index:
            self._pop_left()

    def _pop_left(self) -> None:
        self._index.popleft()
        self._time.popleft()
        self._base = self._through.popleft()

    def time_of(self, index: int) -> float | None:
        """When entry `index` (or the oldest kept entry after it) was appended."""
        if not self._index or index > self._index[-1]:
            return None
        pos = bisect.bisect_left(self._index, index)
        return self._time[pos]

    def bytes_after(self, index: int) -> int:
        """Bytes of the entries after `index` (those older than what we keep count as already held)."""
        if not self._index or index >= self._index[-1]:
            return 0
        pos = bisect.bisect_left(self._index, index + 1)
        before = self._through[pos - 1] if pos > 0 else self._base
        return self._total - before


class LagMonitor:
    def __init__(self, thresholds: LagThresholds | None = None) -> None:
        self.thresholds = thresholds or LagThresholds()
        self.clock = AppendClock()
        self.applied: dict[int, int] = {}
        self.last_contact: dict[int, float] = {}
        self._critical: set[int] = set()
        self._term_started = float("-inf")
        self._heard_this_term: set[int] = set()

    def start_term(self, now: float) -> None:
        """This node has just become leader. Append times recorded in an earlier leadership are dropped
        (a follower's lag is dated from this one at the earliest), and until a follower first answers in
        this leadership its match index is the leader's initial guess (0), not a fact: it is not called
        critical on that guess before `critical_seconds` have passed. What was heard from followers
        (last contact, applied index) stays true and is kept."""
        self.clock.clear()
        self._term_started = now
        self._heard_this_term.clear()

    def silent_for(self, node_id: int, now: float) -> float:
        """Seconds since `node_id` last answered, counted from this leadership's start at the earliest
        (as for `unreachable`): a new leader has had no chance to hear from anyone yet."""
        contact = self.last_contact.get(node_id)
        since = max(contact if contact is not None else float("-inf"), self._term_started)
        return max(0.0, now - since) if since != float("-inf") else 0.0

    def _unreachable(self, contact: float | None, now: float) -> bool:
        """Silent for a critical period: measured from its last answer, but never from before this
        leadership began (a new leader has had no chance to hear from anyone yet)."""
        since = max(contact if contact is not None else float("-inf"), self._term_started)
        return now - since > self.thresholds.critical_seconds

    def heard_from(self, node_id: int, applied: int, now: float) -> None:
        self.last_contact[node_id] = now
        self._heard_this_term.add(node_id)
        if applied > self.applied.get(node_id, 0):
            self.applied[node_id] = applied

    def compute(self, progress: dict[int, tuple[int, int, str, bool]], last_index: int, commit: int,
                now: float) -> tuple[list[FollowerLag], list[LagTransition]]:
        """Lag of each follower. `progress` maps id -> (match, next, state, is_learner), as the core
        reports it on the leader. Returns the lags and any threshold crossings since the last call."""
        out: list[FollowerLag] = []
        transitions: list[LagTransition] = []
        th = self.thresholds
        if self._term_started == float("-inf"):
            self._term_started = now  # never told of a term: silence is counted from the first look
        for nid, (match, nxt, state, is_learner) in sorted(progress.items()):
            applied = min(self.applied.get(nid, 0), match)
            flush_t = self.clock.time_of(match + 1) if match < last_index else None
            replay_t = self.clock.time_of(applied + 1) if applied < commit else None
            contact = self.last_contact.get(nid)
            lag_entries = max(0, last_index - match)
            flush = max(0.0, now - flush_t) if flush_t is not None else 0.0
            unreachable = self._unreachable(contact, now)
            lag = FollowerLag(
                id=nid, match=match, next=nxt, applied=applied, state=state, is_learner=is_learner,
                lag_entries=lag_entries, lag_bytes=self.clock.bytes_after(match),
                flush_lag_seconds=flush,
                replay_lag_seconds=max(0.0, now - replay_t) if replay_t is not None else 0.0,
                last_contact_seconds=(now - contact) if contact is not None else None,
                critical=unreachable or ((lag_entries > th.critical_entries or flush > th.critical_seconds)
                                         and (nid in self._heard_this_term
                                              or now - self._term_started > th.critical_seconds)),
                unreachable=unreachable,
            )
            out.append(lag)
            if lag.critical and nid not in self._critical:
                self._critical.add(nid)
                transitions.append(LagTransition(nid, True, lag))
            elif not lag.critical and nid in self._critical:
                self._critical.discard(nid)
                transitions.append(LagTransition(nid, False, lag))
        if out:
            self.clock.forget_through(min(min(lg.match for lg in out), min(lg.applied for lg in out)))
        for gone in set(self.applied) - set(progress):
            self.applied.pop(gone, None)
            self._critical.discard(gone)
        return out, transitions
