"""Membership changes that would silently take fault tolerance away are refused, and a removed member
knows it was removed: on real `raftkv serve` processes.

The rules (README, "Running a cluster"): a change is refused with FAILED_PRECONDITION when the voters that
are healthy now (heard from by the leader within an election timeout and caught up with its log) could
not commit in the new configuration, or, for an addition, would survive fewer failures than before; a
node that is not yet a member is never healthy, so a voter is added as a learner, started and promoted
once caught up. A removed member refuses every request, is not ready, and exits NEEDS_OPERATOR."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from benchmarks.ports import free_port
from raftkv.client import Client, FailedPreconditionError, InvalidArgumentError, RaftKVError, UnavailableError
from raftkv.exit_codes import NEEDS_OPERATOR
from raftkv.server.config import ConfigError, ServerConfig

from .local_cluster import LocalCluster
from .test_cli import kv


def _member_ids(cluster: LocalCluster, among: list[int] | None = None) -> list[int]:
    eps = ",".join(cluster.address(i) for i in (among or sorted(cluster.procs)))
    with Client(eps, timeout=10) as c:
        return sorted(m.id for m in c.members().members)


def _wait_log(cluster: LocalCluster, i: int, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in cluster.log_text(i):
            return
        time.sleep(0.05)
    raise AssertionError(f"node {i} did not log {text!r} within {timeout}s; log in {cluster.logs.get(i)}")


def _wait_caught_up(c: Client, *nodes: int, timeout: float = 20.0) -> None:
    """Until the leader reports each of `nodes` replicating, with no lag, and recently heard from: what the
    strict reconfiguration check calls healthy. (Right after a start, the leader may not have reached every
    follower yet, and a change that needs them is then rightly refused.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            lags = {f.id: f for f in c.lag().followers}
        except RaftKVError:
            lags = {}
        if all(n in lags and lags[n].state == "replicate" and lags[n].lag_entries == 0
               and 0 <= lags[n].last_contact_seconds < 0.1 for n in nodes):
            return
        time.sleep(0.1)
    raise AssertionError(f"nodes {nodes} did not catch up within {timeout}s")


# -- addresses ----------------------------------------------------------------------------------------

def test_listen_with_a_port_out_of_range_refuses_to_start(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "raftkv.cli.server_main", "serve", "--id", "1", "--data-dir", str(tmp_path / "d")]
    for flags, words in (
        (["--listen", "127.0.0.1:99999"], "port 99999"),
        (["--listen", "127.0.0.1:0"], "port 0"),
        (["--listen", ":7001"], "host"),
        (["--listen", "127.0.0.1:70a1"], "port"),
        (["--listen", f"127.0.0.1:{free_port()}", "--peers", "1=127.0.0.1:7001,2=127.0.0.1:65536"], "port 65536"),
        (["--listen", f"127.0.0.1:{free_port()}", "--metrics-listen", "127.0.0.1:-1"], "--metrics-listen"),
    ):
        r = subprocess.run(base + flags, capture_output=True, text=True, timeout=60)
        assert r.returncode != 0, flags
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], (flags, r.stderr)
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "d").exists(), "a refused configuration must not create the data directory"


def test_ipv6_and_ordinary_addresses_are_accepted() -> None:
    cfg = ServerConfig(id=1, data_dir="/tmp/x", listen="[::1]:7001", peers={1: "[::1]:7001", 2: "node-2.raft:7002"})
    cfg.validate()
    for bad in ("[::1]", "[::1]:99999", "::1:7001", "host:", "host:0"):
        with pytest.raises(ConfigError):
            ServerConfig(id=1, data_dir="/tmp/x", listen=bad).validate()


def test_member_address_is_validated_and_must_be_unique(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        with pytest.raises(InvalidArgumentError, match="port 99999") as e:
            c.member_add(4, "127.0.0.1:99999", learner=True)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(FailedPreconditionError, match=f"address {cluster.address(2)} is already used by node 2"
                           ) as e:
            c.member_add(4, cluster.address(2), learner=True)
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(FailedPreconditionError, match="already used by node 3"):
            c.member_update(2, address=cluster.address(3))
    assert _member_ids(cluster) == [1, 2, 3]
    r = kv(cluster, "members", "add", "4", cluster.address(1), "--learner")
    assert r.returncode != 0 and r.stderr.startswith("Error: ") and "already used by node 1" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# -- adding and promoting -----------------------------------------------------------------------------

def test_adding_a_voter_where_nothing_runs_is_refused(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    with cluster.client() as c:
        _wait_caught_up(c, *[i for i in (1, 2, 3) if i != leader])  # all three healthy: tolerates 1 failure
    cluster.add_node(4)  # a free port: nothing runs there
    r = kv(cluster, "members", "add", "4", cluster.address(4))
    assert r.returncode != 0 and r.stderr.startswith("Error: ") and len(r.stderr.strip().splitlines()) == 1
    assert "add it as a learner" in r.stderr and "Traceback" not in r.stderr
    with cluster.client() as c:
        with pytest.raises(FailedPreconditionError, match="would survive 0 failures instead of 1") as e:
            c.member_add(4, cluster.address(4))
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert _member_ids(cluster) == [1, 2, 3]
    with cluster.client() as c:
        assert c.put("still-writable", "1").meta.index > 0


def test_a_learner_is_promoted_only_once_it_has_caught_up(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        for n in range(30):
            c.put(f"before-{n}", "v")
        cluster.add_node(4)
        c.member_add(4, cluster.address(4), learner=True)
        # Not started yet: never heard from, holds nothing.
        with pytest.raises(FailedPreconditionError, match="node 4 has not caught up") as e:
            c.member_promote(4)
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION and "start it" in str(e.value)
        assert next(m for m in c.members().members if m.id == 4).learner
        cluster.start(4, join=True)
        _wait_caught_up(c, 4)
        r = c.member_promote(4)
        assert not next(m for m in r.members if m.id == 4).learner
        last = c.put("after-promote", "1").meta.index
    cluster.wait_applied(4, last)
    # The README's flow through `kv`, for node 5: add --learner, start with --join, promote once caught up.
    cluster.add_node(5)
    assert kv(cluster, "members", "add", "5", cluster.address(5), "--learner").returncode == 0
    cluster.start(5, join=True)
    with cluster.client() as c:
        _wait_caught_up(c, 5)
    r = kv(cluster, "members", "promote", "5")
    assert r.returncode == 0 and f"5, {cluster.address(5)}, voter" in r.stdout, r.stderr


# -- removing -----------------------------------------------------------------------------------------

def test_a_removal_that_leaves_no_healthy_quorum_is_refused(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    down, up = [i for i in (1, 2, 3) if i != leader]
    with cluster.client() as c:
        _wait_caught_up(c, down, up)
    cluster.kill(down)
    with Client(",".join(cluster.address(i) for i in (leader, up)), timeout=10) as c:
        time.sleep(1.0)  # more than an election timeout: the leader no longer counts `down` as healthy
        with pytest.raises(FailedPreconditionError, match="could not commit") as e:
            c.member_remove(up)
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION and f"node {down}" in str(e.value)
        assert sorted(m.id for m in c.members().members) == [1, 2, 3]
        # Removing the dead one leaves two healthy voters of two: allowed.
        c.member_remove(down)
        assert sorted(m.id for m in c.members().members) == sorted([leader, up])
        assert c.put("after", "1").meta.index > 0


def _assert_removed_and_exits(cluster: LocalCluster, gone: int) -> None:
    _wait_log(cluster, gone, "removed from the cluster")
    try:
        with Client(cluster.address(gone), timeout=2) as c:
            with pytest.raises(FailedPreconditionError, match=f"node {gone} was removed from the cluster") as e:
                c.get("k", consistency="serializable", endpoint=cluster.address(gone))
            assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    except RaftKVError as e:  # only if the process had already exited after its grace period
        assert cluster.procs[gone].poll() is not None, e
    assert cluster.procs[gone].wait(30) == NEEDS_OPERATOR
    assert "Traceback" not in cluster.log_text(gone)
    # Started again on the same data, it refuses at once, with one line.
    cluster.start(gone)
    assert cluster.procs[gone].wait(30) == NEEDS_OPERATOR
    err = [ln for ln in cluster.log_text(gone).splitlines() if ln.startswith("Error:")]
    assert err and f"node {gone} was removed from the cluster" in err[-1]


def test_a_removed_follower_stops_serving_and_exits(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    gone = next(i for i in (1, 2, 3) if i != leader)
    with cluster.client() as c:
        cluster.wait_applied(gone, c.put("k", "v").meta.index)
        _wait_caught_up(c, *[i for i in (1, 2, 3) if i != leader])
        c.member_remove(gone)
    _assert_removed_and_exits(cluster, gone)
    rest = [i for i in (1, 2, 3) if i != gone]
    assert _member_ids(cluster, rest) == rest
    with Client(",".join(cluster.address(i) for i in rest), timeout=10) as c:
        assert c.put("k", "after").meta.index > 0 and c.get("k").kv.value == b"after"


def test_a_member_removed_while_down_learns_it_when_it_returns(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    gone = next(i for i in (1, 2, 3) if i != leader)
    assert cluster.stop(gone) == 0
    rest = [i for i in (1, 2, 3) if i != gone]
    with Client(",".join(cluster.address(i) for i in rest), timeout=10) as c:
        _wait_caught_up(c, *[i for i in rest if i != leader])
        c.member_remove(gone)
        c.put("while-gone", "1")
    cluster.start(gone)  # it still believes it is a voter, hears no leader, and campaigns
    _assert_removed_and_exits(cluster, gone)
    with Client(",".join(cluster.address(i) for i in rest), timeout=10) as c:
        assert c.put("k", "after").meta.index > 0
        assert cluster.status(rest[0]).term == cluster.status(rest[1]).term


def test_a_leader_that_removes_itself_hands_over_and_exits(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    with cluster.client() as c:
        _wait_caught_up(c, *[i for i in (1, 2, 3) if i != leader])
        c.member_remove(leader)
    _assert_removed_and_exits(cluster, leader)
    rest = [i for i in (1, 2, 3) if i != leader]
    new_leader = cluster.wait_leader(rest)
    assert new_leader in rest
    with Client(",".join(cluster.address(i) for i in rest), timeout=10) as c:
        assert c.put("k", "after").meta.index > 0


# -- leadership ---------------------------------------------------------------------------------------

def test_leadership_moves_only_to_a_healthy_voter(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    down, up = [i for i in (1, 2, 3) if i != leader]
    with cluster.client() as c:
        _wait_caught_up(c, down, up)
    cluster.kill(down)
    time.sleep(1.0)  # more than an election timeout
    r = kv(cluster, "leader", "transfer", str(down), endpoints=cluster.address(leader))
    assert r.returncode != 0 and r.stderr.startswith("Error: ") and "Traceback" not in r.stderr
    assert f"node {down} cannot take over leadership" in r.stderr and "running and caught up" in r.stderr
    assert cluster.wait_leader([leader, up]) == leader
    r = kv(cluster, "leader", "transfer", str(up), endpoints=f"{cluster.address(leader)},{cluster.address(up)}")
    assert r.returncode == 0, r.stderr
    assert cluster.wait_leader([leader, up]) == up


# -- a member behind the configuration ------------------------------------------------------------------

def test_a_member_that_missed_the_addition_of_the_leader_catches_up_from_it(cluster: LocalCluster) -> None:
    """A member is down while node 4 is added and takes over leadership. Back up (with the command line
    it was founded with), its configuration (1, 2, 3) does not list its leader: it must still take the
    leader's appends (it learns node 4 from them), not refuse node 4 as a stranger and stay behind for ever
    while its peers reject its campaigns."""

    leader = cluster.wait_leader()
    with cluster.client() as c:
        _wait_caught_up(c, *[i for i in (1, 2, 3) if i != leader])
    lagging = next(i for i in (1, 2, 3) if i != leader)
    assert cluster.stop(lagging) == 0
    up = [i for i in (1, 2, 3) if i != lagging]
    with Client(",".join(cluster.address(i) for i in up), timeout=10) as c:
        cluster.add_node(4)
        c.member_add(4, cluster.address(4), learner=True)
        cluster.start(4, join=True)
        _wait_caught_up(c, 4)
        c.member_promote(4)
        for attempt in range(3):  # bounded: a transfer can time out while node 4 is still settling in
            _wait_caught_up(c, 4)
            try:
                c.transfer_leader(4)
                break
            except UnavailableError:
                if attempt == 2:
                    raise
    assert cluster.wait_leader([*up, 4]) == 4
    with Client(cluster.address(4), timeout=10) as c:
        last = c.put("after-the-change", "1").meta.index
    port4 = cluster.ports.pop(4)  # the founder's own --peers: the three founders
    cluster.start(lagging)
    cluster.ports[4] = port4
    cluster.wait_applied(lagging, last, timeout=30)
    st = cluster.status(lagging)
    assert st.leader_id == 4 and 4 in {m.id for m in st.members}
    text = cluster.log_text(lagging)
    assert "node 4 is not a member" not in text, text[-3000:]
    assert "which this node's configuration does not list" in text
