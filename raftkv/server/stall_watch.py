"""Notices when this node's event loop stops running, says for how long, and shows why.

Everything a node does for its peers and clients runs on one asyncio loop: heartbeats, elections, answers,
reads. When that loop does not run (a thread holding the GIL, a page fault on a slow disk, swapping, CPU
starvation, a process stopped with SIGSTOP), the node is up but silent: its followers elect another leader,
its clients time out, and nothing in its log says so. The tick timer is the loop's heartbeat: a tick
that fires late by an election timeout or more is logged (`event loop stalled`, with the seconds) and
counted (`raftkv_loop_stalls_total`). And, like etcd's "leader failed to send out heartbeat on time",
but with the cause: a watchdog thread writes every thread's Python stack to the log if no tick comes for
`dump_after_s`, while the loop is still stuck. The same thread writes them on request (`kill -USR1`).

The stacks are taken with the GIL held (`sys._current_frames`), never by faulthandler's watchdog or
signal handler: those read other threads' frames while those threads run, and CPython can crash doing so
(python/cpython#116008, #131580). A diagnostic must not be able to kill the node it diagnoses. The price:
a thread that holds the GIL inside one long C call delays the dump until it lets go; a loop waiting on
a disk (an fsync, a page fault of the memory map) has released the GIL, which is the case that matters.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import TextIO


def format_stacks(header: str) -> str:
    """Every thread's Python stack, most recent call last, under `header`."""
    names = {t.ident: t.name for t in threading.enumerate()}
    me = threading.get_ident()
    parts = [header]
    for ident, frame in sys._current_frames().items():
        if ident == me:
            continue  # the watchdog itself: always in this function
        parts.append(f"Thread {names.get(ident, '?')} ({ident:#x}), most recent call last:")
        parts.append("".join(traceback.format_stack(frame)).rstrip("\n"))
    return "\n".join(parts) + "\n"


class StallWatch:
    def __init__(self, warn_after_s: float, on_stall: Callable[[float], None]) -> None:
        """`warn_after_s`: a beat this much later than due is reported, with how long the loop stood."""
        self.warn_after_s = warn_after_s
        self.dump_after_s = 0.0
        """Seconds without a beat after which the watchdog writes every stack (0: no watchdog). Set by
        `start_watchdog` in a real process only: the simulator's loop runs on simulated time."""
        self._on_stall = on_stall
        self._expected: float | None = None
        self._last_beat = time.monotonic()
        self._wake = threading.Event()
        self._dump_asked = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._out: TextIO = sys.stderr

    def beat(self, now: float, interval_s: float) -> None:
        """The tick timer fired at `now` (monotonic seconds) and fires again in `interval_s`."""
        if self._expected is not None:
            late = now - self._expected
            if late >= self.warn_after_s:
                self._on_stall(late + interval_s)  # the time since the previous tick ran
        self._expected = now + interval_s
        self._last_beat = time.monotonic()  # the watchdog's clock is always the real one

    def start_watchdog(self, dump_after_s: float, out: TextIO | None = None) -> None:
        """Start the thread that writes every stack to `out` (stderr: the log) once no beat has come for
        `dump_after_s`, once per stall, and whenever `ask_dump` is called."""
        self.dump_after_s = dump_after_s
        self._out = out or sys.stderr
        self._last_beat = time.monotonic()
        self._thread = threading.Thread(target=self._watch, name="raftkv-stall-watchdog", daemon=True)
        self._thread.start()

    def ask_dump(self) -> None:
        """Write every thread's stack now (from the watchdog thread; safe to call from a signal handler)."""
        self._dump_asked = True
        self._wake.set()

    def stop(self) -> None:
        self._expected = None
        self._stopped = True
        self._wake.set()

    def _watch(self) -> None:
        period = min(0.25, self.dump_after_s / 4)
        dumped_for = -1.0  # the beat whose stall was already dumped
        while not self._stopped:
            waited_from = time.monotonic()
            self._wake.wait(period)
            self._wake.clear()
            now = time.monotonic()
            if self._dump_asked:
                self._dump_asked = False
                self._write(format_stacks("Stacks of every thread (asked for with SIGUSR1):"))
            if now - waited_from > period + self.dump_after_s / 2:
                # The watchdog itself did not run either: the whole process was stopped (SIGSTOP,
                # suspended VM). Its stacks now would show the loop running again, not what held it.
                dumped_for = self._last_beat
                continue
            last = self._last_beat
            stood = now - last
            if stood >= self.dump_after_s and last != dumped_for:
                dumped_for = last
                self._write(format_stacks(f"Stacks of every thread: the event loop has not run for {stood:.1f} s "
                                          f"(stall watchdog, after {self.dump_after_s:g} s):"))

    def _write(self, text: str) -> None:
        try:
            self._out.write(text)
            self._out.flush()
        except (OSError, ValueError):  # stderr closed or gone: nowhere to say it
            pass
