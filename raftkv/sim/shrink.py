"""Shrinking a failing run: delta debugging (schedule.py's `ddmin`) over its fault schedule, then over its
clients, re-running the same seed with subsets for as long as the same check still fails. What is left is
a 1-minimal schedule and client set for that failure; the report shows it, the history of the keys the
failure involves in the shrunk run, and the command that replays the shrunk run exactly."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .host_run import HostCluster, HostSimResult, replay_command
from .schedule import Event, ddmin


@dataclass
class Shrunk:
    original: HostSimResult
    result: HostSimResult
    """The shrunk run (it fails the same check)."""
    events: list[Event]
    clients: list[int]
    runs: int

    def report(self) -> list[str]:
        o, r = self.original, self.result
        assert r.violation is not None
        lines = [f"shrunk in {self.runs} runs: {len(self.events)} of {len(o.events)} events, "
                 f"{len(self.clients)} of {o.opts.clients + o.swarm.pipelined} clients; still: {r.violation}",
                 "schedule:"]
        lines += ["  " + e.line() for e in self.events] or ["  (no faults)"]
        if r.shrunk:
            lines.append("history of the keys involved (>> the offending operations):")
            lines += ["  " + line for line in r.shrunk]
        else:
            lines.append("last events:")
            lines += ["  " + line for line in r.trace[-30:]]
        lines.append(f"replay: {r.replay_command()} --trace")
        return lines


def shrink(failed: HostSimResult, max_runs: int = 120) -> Shrunk:
    """Shrink `failed` (a run with a violation) within about `max_runs` re-runs."""
    assert failed.violation is not None
    want = failed.violation.invariant
    base = dataclasses.replace(failed.opts, trace=False)
    runs = 0

    def fails(events: list[Event], clients: list[int] | None) -> bool:
        nonlocal runs
        runs += 1
        opts = dataclasses.replace(base, keep_events=frozenset(e.number for e in events),
                                   keep_clients=None if clients is None else frozenset(clients))
        r = HostCluster(opts).run()
        return r.violation is not None and r.violation.invariant == want

    events = ddmin(failed.events, lambda evs: fails(evs, None), max_tests=max_runs * 2 // 3)
    every = list(range(1, base.clients + 1 + failed.swarm.pipelined))
    all_clients = sorted(base.keep_clients) if base.keep_clients is not None else every
    clients = ddmin(all_clients, lambda cs: fails(events, cs), max_tests=max(1, max_runs - runs))
    final = dataclasses.replace(base, keep_events=frozenset(e.number for e in events),
                                keep_clients=None if clients == all_clients else frozenset(clients))
    result = HostCluster(final).run()
    runs += 1
    if result.violation is None or result.violation.invariant != want:  # cannot happen: runs replay exactly
        result, events, clients = failed, failed.events, all_clients
    return Shrunk(failed, result, events, clients, runs)


__all__ = ["Shrunk", "replay_command", "shrink"]
