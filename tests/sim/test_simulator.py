"""The simulator's Raft invariants and its command line: a seed names a run exactly, the invariant
checks can fail, the real host passes many faulty runs (3 and 5 nodes, every fault) and the paper's
Figure 8 schedules, and a core with Figure 8's commit bug planted in it is caught."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from raftkv.core import Config, Entry, MemoryStorage, RaftNode
from raftkv.sim import HostSimOptions, Violation, run_host_seed, run_host_seeds
from raftkv.sim.invariants import SafetyChecker
from raftkv.sim.swarm import FIGURE8, HOST_FAULTS

from ..planted_bugs import CountingCommitRaft


def test_same_seed_same_run() -> None:
    a = run_host_seed(77, HostSimOptions(nodes=5))
    b = run_host_seed(77, HostSimOptions(nodes=5))
    assert a.trace == b.trace and a.trace
    assert (a.ops, a.elections, a.commits, a.faults, a.messages) == (b.ops, b.elections, b.commits, b.faults,
                                                                      b.messages)
    c = run_host_seed(78, HostSimOptions(nodes=5))
    assert c.trace != a.trace


@pytest.mark.parametrize("nodes,seeds", [(3, range(1, 26)), (5, range(1001, 1016))])
def test_host_survives_many_faulty_runs(nodes: int, seeds: range) -> None:
    """3- and 5-node clusters with every fault, each ending in a liveness check."""
    summary = run_host_seeds(seeds, HostSimOptions(nodes=nodes, faults=HOST_FAULTS))
    print(summary.line())
    failures = [f"seed {f.seed}: {f.violation} -- replay: {f.replay_command()}" for f in summary.failures]
    assert not failures, "\n".join(failures)
    assert summary.elections > len(seeds) and summary.commits > 10 * len(seeds) and summary.faults > 0


def test_host_survives_figure8_schedules() -> None:
    summary = run_host_seeds(range(1, 21), FIGURE8)
    assert not summary.failures, [str(f.violation) for f in summary.failures]


def test_simulator_catches_old_term_commit_by_counting() -> None:
    """A core with the Figure 8 bug must be caught by the Raft invariants. Seeds are searched in order, so
    the result is the same on every run; the cap is generous so unrelated changes to the schedule do not
    hide the bug."""
    summary = run_host_seeds(range(1, 2001), dataclasses.replace(FIGURE8, raft_class=CountingCommitRaft),
                             stop_at_first=True)
    assert summary.failures, f"the broken commit rule went unnoticed in {summary.seeds} seeds"
    v = summary.failures[0].violation
    assert v is not None and v.invariant in ("leader completeness", "state-machine safety", "log matching")
    print(f"caught at seed {summary.failures[0].seed}: {v}")


def test_checker_flags_two_leaders_in_one_term() -> None:
    net = [RaftNode(Config(id=i), MemoryStorage()) for i in (1, 2)]
    chk = SafetyChecker()
    for n in net:
        n.raft.term = 3
    chk.observe_leader(net[0])
    with pytest.raises(Violation, match="election safety"):
        chk.observe_leader(net[1])


def test_checker_flags_divergent_applied_entries() -> None:
    chk = SafetyChecker()
    chk.on_apply(1, Entry(2, 5, data=b"a"))
    chk.on_apply(2, Entry(2, 5, data=b"a"))
    with pytest.raises(Violation, match="state-machine safety"):
        chk.on_apply(3, Entry(3, 5, data=b"b"))


def test_checker_flags_log_matching_break() -> None:
    a, b = MemoryStorage(), MemoryStorage()
    a.append([Entry(1, 1, data=b"x"), Entry(1, 2, data=b"y")])
    b.append([Entry(1, 1, data=b"DIFFERENT"), Entry(1, 2, data=b"y")])
    nodes = [RaftNode(Config(id=1), a), RaftNode(Config(id=2), b)]
    with pytest.raises(Violation, match="log matching"):
        SafetyChecker().check_log_matching(nodes)


def test_checker_flags_leader_missing_committed_entry() -> None:
    chk = SafetyChecker()
    chk.on_apply(1, Entry(1, 1, data=b"committed"))
    st = MemoryStorage()
    st.append([Entry(2, 1, data=b"other")])
    n = RaftNode(Config(id=2), st)
    n.raft.term = 3
    with pytest.raises(Violation, match="leader completeness"):
        chk.observe_leader(n)


def test_cli_summary_and_exit_code() -> None:
    out = subprocess.run([sys.executable, "-m", "raftkv.sim", "--nodes", "3", "--seeds", "3"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("seeds=3 ") and "violations=0" in line and "seeds/s" in line
    alias = subprocess.run([sys.executable, "-m", "raftkv.sim", "--host", "--seeds", "1"], capture_output=True,
                           text=True, timeout=120)
    assert alias.returncode == 0 and alias.stdout.strip().splitlines()[-1].startswith("seeds=1 "), alias.stderr
    bad = subprocess.run([sys.executable, "-m", "raftkv.sim", "--faults", "bogus"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "unknown fault" in bad.stderr


def test_replay_command_names_the_run() -> None:
    r = run_host_seed(9, HostSimOptions(nodes=5, duration_s=0.2))
    assert r.replay_command() == "python -m raftkv.sim --seed 9 --nodes 5 --duration 0.2"
    f = run_host_seed(9, dataclasses.replace(FIGURE8, duration_s=0.2, keep_events=frozenset({0, 2})))
    assert f.replay_command() == "python -m raftkv.sim --seed 9 --figure8 --duration 0.2 --events 0,2"
