"""When a leader tells its followers that its commit index moved, if nothing else has told them first.

A leader that commits an entry used to send each follower an empty append carrying the new commit index at
once (etcd-io/raft's `bcastAppend` after `maybeCommit`). On a machine where the leader, its followers and
the writer share a few cores, that round (two appends out, two answers back) runs exactly when the writer's
answer leaves and its next request arrives, and it cost a lone writer up to a fifth of its latency
(benchmarks/README.md, "A lone write"). With `--commit-notice-delay-ms` above 0 the core defers the notice
(`Config.defer_commit_notice`): the next append carries the commit index anyway, and that is usually the
writer's next write; this class sends it when none came within the delay, so a follower learns of a commit
at most that much later (its serializable, session and follower reads see a new write that much later;
commits, acknowledgements and durability do not change).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..core.node import RaftNode


class CommitNotices:
    """Sends a deferred commit notice once it has been owed for `delay_s`; the host's loop calls
    `send_if_due` when it takes its inputs and `arm` after each round of Readies."""

    def __init__(self, delay_s: float, wake: Callable[[], None]) -> None:
        self.delay_s = delay_s
        self._wake = wake
        self._owed = 0  # the core's number of the notice owed (0: none)
        self._deadline = 0.0  # when it is due
        self._timer: asyncio.TimerHandle | None = None
        self._timer_for = 0  # the notice the timer was armed for
        self._fired_for = 0  # ... and that it fired for: due, whatever the clock's rounding says

    def send_if_due(self, node: RaftNode, now: float) -> None:
        owed = self._owed
        if owed and node.commit_notice_pending() == owed and (self._fired_for == owed or now >= self._deadline):
            node.send_commit_notice()
            self._owed = 0

    def arm(self, node: RaftNode, now: float) -> None:
        """Note a newly owed notice, and wake the loop when it is due (unless an append tells it first)."""
        number = node.commit_notice_pending()
        if number != self._owed:
            self._owed = number
            self._deadline = now + self.delay_s
        if number and self._timer is None:
            self._timer_for = number
            self._timer = asyncio.get_running_loop().call_later(max(0.0, self._deadline - now), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._fired_for = self._timer_for
        self._wake()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
