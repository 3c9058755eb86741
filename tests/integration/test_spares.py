"""Hot spares (N+M) on real `raftkv serve` processes: a 3-voter cluster with one spare learner loses a
voter to kill -9; the leader promotes the spare once it is caught up and demotes the dead voter to a
learner, while writes keep being acknowledged and none acknowledged is lost. A spare that has not caught
up is never promoted, and with `--spare-promote-after 0` nothing happens at all (README, "Hot spares")."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from raftkv.client import Client, InvalidArgumentError, OutcomeUnknownError, RaftKVError

from .local_cluster import LocalCluster
from .observe import events_named, sample, scrape, wait_for
from .test_cli import kv
from .test_membership_safety import _wait_caught_up

PROMOTE_AFTER = "2"


@dataclass
class Writer:
    """Puts distinct keys until stopped (at most `limit`), remembering each acknowledged one and when."""

    endpoints: str
    limit: int = 3000
    acked: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with Client(self.endpoints, timeout=5) as c:
            for n in range(self.limit):
                if self.stop.is_set():
                    return
                key = f"w{n:05d}"
                try:
                    c.put(key, key)
                except RaftKVError:
                    time.sleep(0.05)
                    continue
                self.acked.append((time.monotonic(), key))
                time.sleep(0.01)

    def acked_between(self, t0: float, t1: float) -> int:
        return sum(1 for t, _ in self.acked if t0 <= t < t1)


def _roles(c: Client) -> dict[int, str]:
    return {m.id: ("learner" if m.learner else "voter") + (",spare" if m.spare else "") for m in c.members().members}


def _follower(cluster: LocalCluster, *excluding: int) -> int:
    leader = cluster.wait_leader(among=[i for i in (1, 2, 3) if cluster.procs[i].poll() is None])
    return next(i for i in (1, 2, 3) if i != leader and i not in excluding and cluster.procs[i].poll() is None)


def test_a_dead_voter_is_replaced_by_a_caught_up_spare(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, extra=["--spare-promote-after", PROMOTE_AFTER]).start_all()
    writer = Writer(",".join(cluster.address(i) for i in (1, 2, 3)))
    thread = threading.Thread(target=writer.run, daemon=True)
    try:
        cluster.add_node(4)
        r = kv(cluster, "members", "add", "4", cluster.address(4), "--learner", "--spare")
        assert r.returncode == 0 and f"4, {cluster.address(4)}, learner, spare" in r.stdout, r.stderr
        status = kv(cluster, "status", endpoints=",".join(cluster.address(i) for i in (1, 2, 3)))
        assert "spares (hot spare learners, promoted in place of a dead voter): 4" in status.stdout, status.stderr
        thread.start()
        victim = _follower(cluster)
        cluster.kill(victim)
        t_kill = time.monotonic()
        live = [i for i in (1, 2, 3) if i != victim]
        eps = ",".join(cluster.address(i) for i in live)

        # The spare is not running yet: it holds nothing and was never heard from, so it is not promoted.
        def held() -> list[dict]:
            return [e for i in live for e in events_named(cluster, i, "voter unreachable, no spare promoted")
                    if e.get("voter") == victim and "no spare is caught up" in e.get("reason", "")]
        wait_for("the leader to decline promoting a spare that has not caught up", held, timeout=30)
        with Client(eps, timeout=10) as c:
            assert _roles(c)[victim] == "voter" and _roles(c)[4] == "learner,spare"

        cluster.start(4, join=True)
        with Client(eps, timeout=10) as c:
            wait_for("the spare to replace the dead voter",
                     lambda: _roles(c) == {**{i: "voter" for i in live}, 4: "voter", victim: "learner"}, timeout=40)
        t_replaced = time.monotonic()
        r = kv(cluster, "members", "list", endpoints=eps)
        assert f"4, {cluster.address(4)}, voter\n" in r.stdout and f"{victim}, {cluster.address(victim)}, learner\n" \
            in r.stdout, r.stdout
        # The leader that made the replacement (whichever it was) logged and counted it, once.
        assert sum(sample(scrape(cluster, i), "raftkv_spare_promotions_total") for i in live) == 1
        promoted = [e for i in live for e in events_named(cluster, i, "promoting spare in place of unreachable voter")]
        demoted = [e for i in live for e in events_named(cluster, i, "replaced voter demoted to learner")]
        assert [(e["spare"], e["voter"]) for e in promoted] == [(4, victim)]
        assert [(e["spare"], e["voter"]) for e in demoted] == [(4, victim)]
        leader = cluster.wait_leader(among=[*live, 4])

        # Full fault tolerance again: the cluster (two old voters and the spare) survives one more loss.
        wait_for("writes after the replacement", lambda: writer.acked_between(t_replaced, 1e18) >= 5, timeout=30)
        other = next(i for i in live if i != leader)
        left = [i for i in (*live, 4) if i != other]
        with Client(eps, timeout=10) as c:
            _wait_caught_up(c, 4)
        cluster.kill(other)
        t_second = time.monotonic()
        wait_for("writes with the spare counting for commit",
                 lambda: writer.acked_between(t_second, 1e18) >= 5, timeout=30)
        writer.stop.set()
        thread.join(30)
        assert writer.acked_between(t_kill, t_replaced) > 0, "no write was acknowledged while the voter was dead"
        # Every acknowledged write is there, read (linearizably) from the two voters left, one of them the
        # promoted spare.
        with Client(",".join(cluster.address(i) for i in left), timeout=10) as c:
            missing = [k for _, k in writer.acked if not c.get(k).found]
        assert not missing, f"{len(missing)} of {len(writer.acked)} acknowledged writes lost, e.g. {missing[:5]}"
    finally:
        writer.stop.set()
        if thread.is_alive():
            thread.join(30)
        cluster.stop_all()


def test_with_the_feature_off_a_dead_voter_stays_a_voter(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, extra=["--spare-promote-after", "0"]).start_all()
    try:
        cluster.add_node(4)
        with Client(",".join(cluster.address(i) for i in (1, 2, 3)), timeout=10) as c:
            c.member_add(4, cluster.address(4), learner=True, spare=True)
            cluster.start(4, join=True)
            _wait_caught_up(c, 4)
            victim = _follower(cluster)
            cluster.kill(victim)
            # Well past the delay after which the other test's leader replaces a voter.
            deadline = time.monotonic() + 1.5 * float(PROMOTE_AFTER) + 1
            while time.monotonic() < deadline:
                try:
                    c.put("k", "v")
                except OutcomeUnknownError:
                    pass  # sent to the victim just as it was killed (it forwards to the leader): no matter here
                time.sleep(0.1)
            assert _roles(c) == {1: "voter", 2: "voter", 3: "voter", victim: "voter", 4: "learner,spare"}
        for i in (1, 2, 3, 4):
            if i != victim:
                assert not events_named(cluster, i, "promoting spare in place of unreachable voter")
        # The mark: a learner's only, set and cleared with `kv members update`, refused on a voter.
        eps = ",".join(cluster.address(i) for i in (1, 2, 3, 4) if i != victim)
        voter = next(i for i in (1, 2, 3) if i != victim)
        with Client(eps, timeout=10) as c:
            with pytest.raises(InvalidArgumentError, match=f"node {voter} is a voter: only a learner can be a spare"):
                c.member_update(voter, spare=True)
            with pytest.raises(InvalidArgumentError, match="a spare is a learner: add it with --learner --spare"):
                c.member_add(5, "127.0.0.1:1", spare=True)
            assert [m.spare for m in c.member_update(4, spare=False).members if m.id == 4] == [False]
            assert [m.spare for m in c.member_update(4, spare=True).members if m.id == 4] == [True]
    finally:
        cluster.stop_all()
