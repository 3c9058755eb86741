"""Notices when this node's event loop stops running, says for how long, and shows why.

Everything a node does for its peers and clients runs on one asyncio loop: heartbeats, elections, answers,
reads. When that loop does not run (a thread holding the GIL, a page fault on a slow disk, swapping, CPU
starvation, a process stopped with SIGSTOP), the node is up but silent: its followers elect another leader,
its clients time out, and nothing in its log says so. The tick timer is the loop's heartbeat: a tick
that fires late by an election timeout or more is logged (`event loop stalled`, with the seconds) and
counted (`raftkv_loop_stalls_total`). And, like etcd's "leader failed to send out heartbeat on time",
but with the cause: a watchdog thread outside the GIL (`faulthandler.dump_traceback_later`), re-armed by
every tick, writes every thread's Python stack to the log if no tick comes for `dump_after_s`, while the
loop is still stuck.
"""

from __future__ import annotations

import faulthandler
from collections.abc import Callable


class StallWatch:
    def __init__(self, warn_after_s: float, on_stall: Callable[[float], None]) -> None:
        """`warn_after_s`: a beat this much later than due is reported, with how long the loop stood."""
        self.warn_after_s = warn_after_s
        self.dump_after_s = 0.0
        """Seconds without a beat after which the watchdog dumps every stack (0: no watchdog). Set only by
        a real process: the simulator's loop runs on simulated time."""
        self._on_stall = on_stall
        self._expected: float | None = None

    def beat(self, now: float, interval_s: float) -> None:
        """The tick timer fired at `now` (monotonic seconds) and fires again in `interval_s`."""
        if self._expected is not None:
            late = now - self._expected
            if late >= self.warn_after_s:
                self._on_stall(late + interval_s)  # the time since the previous tick ran
        self._expected = now + interval_s
        if self.dump_after_s > 0:
            faulthandler.dump_traceback_later(self.dump_after_s, repeat=False)

    def stop(self) -> None:
        self._expected = None
        if self.dump_after_s > 0:
            faulthandler.cancel_dump_traceback_later()
