"""What the leader knows about each follower's log, and how it paces replication to it.

A follower is in one of three states (as in etcd-io/raft):
- PROBE: we do not know where its log ends; send one APP at a time and wait for the answer.
- REPLICATE: its log matches ours up to `match`; stream APPs optimistically, at most
  `max_inflight` unacknowledged, so a slow follower cannot make the leader buffer without bound.
- SNAPSHOT: it is behind our compacted log; a snapshot is on its way, send nothing else.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum


class ProgressState(Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """Last indices of APP messages sent but not yet acknowledged, oldest first."""

    __slots__ = ("_q", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._q: deque[int] = deque()

    def add(self, last_index: int) -> None:
        self._q.append(last_index)

    def free_le(self, index: int) -> None:
        """Forget every message whose entries are all acknowledged by `index`."""
        q = self._q
        while q and q[0] <= index:
            q.popleft()

    def free_first_one(self) -> None:
        if self._q:
            self._q.popleft()

    def full(self) -> bool:
        return len(self._q) >= self.capacity

    def reset(self) -> None:
        self._q.clear()

    def __len__(self) -> int:
        return len(self._q)


@dataclass(slots=True)
class Progress:
    match: int
    next: int
    max_inflight: int
    is_learner: bool = False
    state: ProgressState = ProgressState.PROBE
    pending_snapshot: int = 0
    probe_sent: bool = False
    """In PROBE: an APP is out and unanswered; wait for its answer (or a heartbeat response) first."""
    recent_active: bool = False
    """Heard from within the last election timeout; the leader's CheckQuorum counts these."""
    inflights: Inflights = field(init=False)

    def __post_init__(self) -> None:
        self.inflights = Inflights(self.max_inflight)

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, n: int) -> bool:
        """Record that the follower durably holds our log up to `n`; False if that is old news."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.probe_sent = False
        self.next = max(self.next, n + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected an APP whose previous index was `rejected`. Move `next` back, using the
        follower's hint to skip a whole conflicting term at once. False if the rejection is stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1, 1)
        self.probe_sent = False
        return True

    def sent_entries(self, last_index: int | None) -> None:
        """Account for an APP just sent, carrying entries up to `last_index` (None: no entries)."""
        if self.state == ProgressState.REPLICATE:
            if last_index is not None:
                self.next = last_index + 1
                self.inflights.add(last_index)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True
