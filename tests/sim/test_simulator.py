"""The simulator: deterministic, its checks can fail, and the core passes hundreds of faulty runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from raftkv.core import Config, Entry, MemoryStorage, RaftNode
from raftkv.core.quorum import quorum_index
from raftkv.core.raft import Raft
from raftkv.sim import Cluster, SimOptions, Violation
from raftkv.sim.cluster import ALL_FAULTS
from raftkv.sim.invariants import SafetyChecker
from raftkv.sim.runner import run_seeds

# Faults that make the paper's Figure 8 schedule likely: new leaders die moments after winning, and
# entries travel one per message, so a majority can hold an old-term entry without the new term's.
FIGURE8 = SimOptions(nodes=3, faults=("crash", "drop", "partition", "isolate-leader", "delay"),
                     max_size_per_msg=1, max_inflight_msgs=1, new_leader_crash=0.5, new_leader_crash_within=30,
                     duration=3000)


class CountingCommitRaft(Raft):
    """Commits whatever a majority holds, whatever its term (Raft §5.4.2 says: only current-term entries)."""

    def maybe_commit(self) -> bool:
        mci = quorum_index(self.conf.voters, {nid: pr.match for nid, pr in self.prs.items()})
        if mci > self.log.committed:
            self.log.commit_to(mci)
            return True
        return False


def broken_factory(cfg: Config, storage: MemoryStorage) -> RaftNode:
    return RaftNode(cfg, storage, CountingCommitRaft)


def test_same_seed_same_run() -> None:
    a = Cluster(SimOptions(nodes=5, seed=77)).run()
    b = Cluster(SimOptions(nodes=5, seed=77)).run()
    assert a.trace == b.trace and a.trace
    assert (a.steps, a.elections, a.commits, a.faults, a.messages) == (b.steps, b.elections, b.commits, b.faults,
                                                                        b.messages)
    c = Cluster(SimOptions(nodes=5, seed=78)).run()
    assert c.trace != a.trace


@pytest.mark.parametrize("nodes,seeds", [(3, range(1, 301)), (5, range(1001, 1201))])
def test_core_survives_many_faulty_runs(nodes: int, seeds: range) -> None:
    """500 seeds across 3- and 5-node clusters with every fault, each ending in a liveness check."""
    summary = run_seeds(seeds, SimOptions(nodes=nodes, faults=ALL_FAULTS))
    print(summary.line(nodes))
    failures = [f"seed {f.seed}: {f.violation} -- replay: {f.replay_command(ALL_FAULTS)}" for f in summary.failures]
    assert not failures, "\n".join(failures)
    assert summary.elections > len(seeds) and summary.commits > 10 * len(seeds) and summary.faults > 0


def test_core_survives_figure8_schedules() -> None:
    summary = run_seeds(range(1, 101), FIGURE8)
    assert not summary.failures, [str(f.violation) for f in summary.failures]


def test_simulator_catches_old_term_commit_by_counting() -> None:
    """A core with the Figure 8 bug must be caught. Seeds are searched in order, so the result is the same
    on every run; the cap is generous so unrelated changes to the schedule do not hide the bug."""
    summary = run_seeds(range(1, 2001), FIGURE8, factory=broken_factory, stop_at_first=True)
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
    assert line.startswith("seeds=3 nodes=3 ") and "violations=0" in line and "seeds/s" in line
    bad = subprocess.run([sys.executable, "-m", "raftkv.sim", "--faults", "bogus"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "unknown fault" in bad.stderr


def test_replay_command_names_the_run() -> None:
    r = Cluster(SimOptions(nodes=5, seed=9, duration=200)).run()
    assert r.replay_command(ALL_FAULTS) == "python -m raftkv.sim --nodes 5 --seed 9 --faults all --trace"
