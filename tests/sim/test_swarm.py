"""Swarm additions to the simulator: learners added, caught up and promoted, voters removed and (wiped)
added back, leadership transfers -- all through the real host's membership operations -- and clocks that
drift apart. Lease reads stay linearizable while drift stays within the bound README gives for them;
clocks planted beyond it are caught by the history check."""

from __future__ import annotations

import collections
import dataclasses

import pytest

from raftkv.server.host import NodeHost
from raftkv.sim import HostSimOptions, run_host_seed, run_host_seeds
from raftkv.sim.schedule import Event, ddmin
from raftkv.sim.shrink import shrink
from raftkv.sim.swarm import drift_bound

MEMBERSHIP = HostSimOptions(nodes=3, spares=2, pipelined=0, faults=("membership", "transfer", "crash", "partition"),
                            trace_keep=100_000)


def test_membership_changes_and_transfers_run_through_the_host() -> None:
    seen: collections.Counter[str] = collections.Counter()
    for seed in range(1, 13):
        r = run_host_seed(seed, MEMBERSHIP)
        assert r.violation is None, (seed, str(r.violation), r.replay_command())
        for line in r.trace:
            for what in ("add_learner", "promote_learner", "remove_node"):
                if f"membership: {what}" in line and "applied at index" in line:
                    seen[what] += 1
            if "transfer leadership" in line:
                seen["transfer"] += 1
            if "wipe removed node" in line:
                seen["wipe"] += 1
    assert seen["add_learner"] and seen["promote_learner"] and seen["remove_node"] and seen["transfer"], seen


def test_drift_bound_matches_the_lease_formula() -> None:
    # A lease of (E - 1 - D) ticks against a follower's E - 1: rates within 1 +- eps keep
    # (1 + eps) / (1 - eps) <= (E - 1) / (E - 1 - D).
    for e in (5, 10, 20):
        eps = drift_bound(e, 2)
        assert abs((1 + eps) / (1 - eps) - (e - 1) / (e - 3)) < 1e-9
    assert drift_bound(3, 2) == 0.0


LEASE = HostSimOptions(nodes=3, spares=0, pipelined=0, lease_reads=True, read_levels=("lease",),
                       faults=("isolate-leader", "transfer"))


def test_lease_reads_stay_linearizable_with_drift_within_the_bound() -> None:
    summary = run_host_seeds(range(1, 16), _with(LEASE, drift=0.99))
    assert not summary.failures, [(f.seed, str(f.violation)) for f in summary.failures]
    assert summary.reads > 100


def test_planted_drift_beyond_the_bound_is_caught() -> None:
    """One clock at half speed, two at one and a half: three times apart, beyond any drawn election
    timeout's bound. A leader on the slow clock (transfers put it there) keeps its lease too long in real
    time, and serves a lease read that misses a write the new leader acknowledged."""
    summary = run_host_seeds(range(1, 41), _with(LEASE, rates=(0.5, 1.5, 1.5)), stop_at_first=True)
    assert summary.failures, f"clocks beyond the drift bound went unnoticed in {summary.seeds} seeds"
    v = summary.failures[0].violation
    assert v is not None and v.invariant.startswith("linearizable read")


def _with(opts: HostSimOptions, **changes: object) -> HostSimOptions:
    return dataclasses.replace(opts, **changes)  # type: ignore[arg-type]


# -- shrinking ------------------------------------------------------------------------------------------

def test_ddmin_finds_a_one_minimal_failing_subset() -> None:
    items = list(range(20))
    calls = []

    def fails(xs: list[int]) -> bool:
        calls.append(len(xs))
        return 3 in xs and 11 in xs

    assert ddmin(items, fails) == [3, 11]
    assert len(calls) < 100


def test_ddmin_keeps_order_and_handles_an_empty_cause() -> None:
    evs = [Event(i, i / 10, "crash", i) for i in range(5)]
    assert ddmin(evs, lambda xs: True) == []
    assert ddmin(evs, lambda xs: evs[4] in xs and evs[0] in xs) == [evs[0], evs[4]]


def test_a_failing_seed_shrinks_to_a_smaller_schedule_that_still_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    async def local_barrier(self: NodeHost) -> int:  # planted: no quorum round, a deposed leader answers
        return self.applied

    monkeypatch.setattr(NodeHost, "linearizable_barrier", local_barrier)
    failed = next(r for r in (run_host_seed(s) for s in range(1, 41)) if r.violation is not None and len(r.events) > 1)
    assert failed.violation is not None
    shrunk = shrink(failed)
    assert shrunk.result.violation is not None
    assert shrunk.result.violation.invariant == failed.violation.invariant
    assert len(shrunk.events) < len(failed.events)
    assert set(shrunk.events) <= set(failed.events)
    report = shrunk.report()
    assert report[0].startswith("shrunk in ") and "schedule:" in report
    assert any(line.startswith("  >> ") for line in report)  # the offending operations, marked
    replay = report[-1]
    assert replay.startswith(f"replay: python -m raftkv.sim --seed {failed.seed} --events ")
    # The printed command names the shrunk run: the same options fail the same way again.
    again = run_host_seed(failed.seed, shrunk.result.opts)
    assert again.violation is not None and str(again.violation) == str(shrunk.result.violation)
    assert again.trace == shrunk.result.trace
