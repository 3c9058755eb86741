"""The stall watchdog (server/stall_watch.py) on real threads and the real clock: it writes every thread's
stack while the beating thread is stuck, once per stall, on request, and never from faulthandler."""

from __future__ import annotations

import io
import threading
import time

from raftkv.server.stall_watch import StallWatch, format_stacks


def _stuck_in_a_slow_call(seconds: float) -> None:
    time.sleep(seconds)  # releases the GIL, as an fsync on a slow disk does


def _watch(dump_after_s: float) -> tuple[StallWatch, io.StringIO, list[float]]:
    stalls: list[float] = []
    w = StallWatch(0.05, stalls.append)
    out = io.StringIO()
    w.start_watchdog(dump_after_s, out)
    return w, out, stalls


def test_a_stuck_loop_gets_every_stack_written_while_it_is_stuck_and_only_once() -> None:
    w, out, stalls = _watch(0.6)
    try:
        w.beat(time.monotonic(), 0.01)
        seen_while_stuck: list[str] = []

        def look() -> None:  # another thread reads the output while the "loop" is still stuck
            time.sleep(1.3)
            seen_while_stuck.append(out.getvalue())

        t = threading.Thread(target=look)
        t.start()
        _stuck_in_a_slow_call(2.0)
        t.join()
        w.beat(time.monotonic(), 0.01)
        text = out.getvalue()
        assert "the event loop has not run for" in seen_while_stuck[0]
        assert "in _stuck_in_a_slow_call" in seen_while_stuck[0], seen_while_stuck[0]
        assert text.count("Stacks of every thread") == 1, text  # one stall, one dump
        assert stalls and stalls[0] >= 1.9  # and the late beat reported how long
    finally:
        w.stop()


def test_a_dump_asked_for_comes_at_once_and_a_beating_loop_gets_none() -> None:
    w, out, _ = _watch(0.3)
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # beating: no stall, no dump
            w.beat(time.monotonic(), 0.01)
            time.sleep(0.01)
        assert out.getvalue() == ""
        w.ask_dump()
        deadline = time.monotonic() + 2.0
        while "asked for with SIGUSR1" not in out.getvalue() and time.monotonic() < deadline:
            w.beat(time.monotonic(), 0.01)
            time.sleep(0.01)
        assert "asked for with SIGUSR1" in out.getvalue()
        assert "in test_a_dump_asked_for_comes_at_once_and_a_beating_loop_gets_none" in out.getvalue()
    finally:
        w.stop()


def test_stacks_name_each_thread_and_leave_out_the_caller() -> None:
    release = threading.Event()
    t = threading.Thread(target=release.wait, name="a-named-thread")
    t.start()
    try:
        text = format_stacks("header")
    finally:
        release.set()
        t.join()
    assert text.startswith("header\n") and "Thread a-named-thread" in text and "in wait" in text
    assert "Thread MainThread" not in text  # the calling thread (here the main one) is left out
