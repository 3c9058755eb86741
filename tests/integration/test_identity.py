"""Lost, replaced and foreign data directories on real `raftkv serve` processes, and one port per node.

A member whose data directory was wiped has forgotten its term, vote and log: the cluster recognises it
by its new incarnation and refuses it until an operator removes and re-adds it. A data directory from
another cluster is refused. A second process cannot take over a node's port.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from raftkv import exit_codes
from raftkv.client import Client, RaftKVError

from .local_cluster import LocalCluster


def _all_recorded(cluster: LocalCluster, nodes: list[int], timeout: float = 20.0) -> dict[int, bytes]:
    """Wait until every node in `nodes` has applied an incarnation for every member; returns them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            views = [{m.id: m.incarnation for m in cluster.status(i).members} for i in nodes]
        except RaftKVError:
            time.sleep(0.1)
            continue
        if all(v and all(v.values()) for v in views) and all(v == views[0] for v in views):
            return views[0]
        time.sleep(0.1)
    raise AssertionError(f"incarnations not recorded on {nodes} within {timeout}s; logs in {cluster.root}")


def _leader_among(cluster: LocalCluster, nodes: list[int]) -> int:
    leaders = set()
    for i in nodes:
        try:
            st = cluster.status(i)
        except RaftKVError:
            continue
        if st.role == "leader":
            leaders.add(i)
    return leaders.pop() if leaders else 0


def _wait_for(pred, what: str, timeout: float = 20.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except RaftKVError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_wiped_member_is_refused_and_no_acknowledged_write_is_lost(cluster: LocalCluster) -> None:
    recorded = _all_recorded(cluster, [1, 2, 3])
    # Write with node 3 stopped: acknowledged by nodes 1 and 2 only.
    assert cluster.stop(3) == 0
    with cluster.client() as c:
        acked = [f"k{i}" for i in range(30)]
        for k in acked:
            c.put(k, "v-" + k)
    # Node 2 loses its data; node 1 goes down. The stale node 3 and the wiped node 2 are all that run.
    assert cluster.stop(1) == 0
    assert cluster.stop(2) == 0
    shutil.rmtree(cluster.root / "node2")
    cluster.start(3)
    cluster.start(2)  # its old command line: it founds afresh, with a new incarnation
    _wait_for(lambda: "data was replaced" in cluster.status(2).identity_problem, "node 2 to learn it was replaced")
    assert cluster.status(2).incarnation != recorded[2]
    # Several election timeouts: node 3 must not be elected with the wiped node's vote.
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        assert _leader_among(cluster, [2, 3]) == 0
        time.sleep(0.1)
    assert "member 2's data was replaced" in cluster.log_text(3)
    assert cluster.log_text(2).count("this node's data was replaced") == 1  # logged once
    r = subprocess.run([sys.executable, "-m", "raftkv.cli.kv", "--endpoints", cluster.address(2), "status"],
                       capture_output=True, text=True, timeout=60)
    assert "NOT READY" in r.stdout and "data was replaced" in r.stdout, r.stdout
    # Node 1 returns: nodes 1 and 3 elect a leader, and every acknowledged write is there.
    cluster.start(1)
    leader = cluster.wait_leader(among=[1, 3])
    assert leader in (1, 3)
    with cluster.client() as c:
        for k in acked:
            assert c.get(k).kv.value == b"v-" + k.encode(), k
        c.put("marker", "after node 1 returned")
        commit = c.status(endpoint=cluster.address(leader)).commit
    # Both data members hold every acknowledged write (no state machine diverged from the log).
    for i in (1, 3):
        cluster.wait_applied(i, commit)
        with Client(cluster.address(i), timeout=5) as ci:
            missing = [k for k in acked if ci.get(k, consistency="serializable",
                                                   endpoint=cluster.address(i)).kv.value != b"v-" + k.encode()]
        assert not missing, (i, missing)
    with cluster.client() as c:
        # Remove the wiped member and add it back as a new one, started with --join on an empty directory.
        c.member_remove(2)
        assert cluster.stop(2) == 0
        shutil.rmtree(cluster.root / "node2")
        c.member_add(2, cluster.address(2), learner=True)
        cluster.start(2, join=True)
        c.put("after", "re-add")
        commit = c.status(endpoint=cluster.address(leader)).commit
    cluster.wait_applied(2, commit)
    st2 = cluster.status(2)
    assert st2.identity_problem == ""
    _wait_for(lambda: {m.id: m.incarnation for m in cluster.status(leader).members}.get(2) == st2.incarnation,
              "node 2's new incarnation to be recorded")
    assert st2.incarnation != recorded[2]
    with Client(cluster.address(2), timeout=5) as c2:
        for k in acked:
            assert c2.get(k, consistency="serializable", endpoint=cluster.address(2)).kv.value == b"v-" + k.encode()
        assert c2.get("after", consistency="serializable", endpoint=cluster.address(2)).kv.value == b"re-add"
    # The leader's view of node 2 is the new member's, not the old one's.
    lag = {f.id: f for f in cluster.status(leader).followers}
    assert lag[2].match >= commit


def test_leader_forgets_the_progress_of_a_wiped_member(cluster: LocalCluster) -> None:
    _all_recorded(cluster, [1, 2, 3])
    leader = cluster.wait_leader()
    wiped = next(i for i in (1, 2, 3) if i != leader)
    with cluster.client() as c:
        for i in range(20):
            c.put(f"p{i}", "x")
        commit = c.status(endpoint=cluster.address(leader)).commit
    _wait_for(lambda: {f.id: f.match for f in cluster.status(leader).followers}[wiped] >= commit,
              "the follower to catch up")
    assert cluster.stop(wiped) == 0
    shutil.rmtree(cluster.root / f"node{wiped}")
    cluster.start(wiped)  # empty, with its old command line
    # The leader refuses it and no longer counts what its previous self held.
    _wait_for(lambda: {f.id: f.match for f in cluster.status(leader).followers}[wiped] == 0,
              "the leader to drop the wiped member's match index")
    _wait_for(lambda: bool(cluster.status(wiped).identity_problem), "the wiped member to know it is refused")
    with cluster.client() as c:
        c.put("still", "writable")  # the two others still make a majority


def test_existing_cluster_state_refuses_an_empty_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "node1"
    cmd = [sys.executable, "-m", "raftkv.cli.server_main", "serve", "--id", "1", "--data-dir", str(data),
           "--listen", "127.0.0.1:1", "--peers", "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3",
           "--initial-cluster-state", "existing"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == exit_codes.NEEDS_OPERATOR, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "--join" in lines[0] and "re-add" in lines[0]
    assert not (data / "data.mdb").exists()  # nothing written: the directory stays empty


def _found(root: Path, like: LocalCluster | None = None, extra: list[str] | None = None) -> LocalCluster:
    root.mkdir(parents=True, exist_ok=True)
    c = LocalCluster(root, extra=extra)
    if like is not None:
        c.ports, c.metrics_ports = dict(like.ports), dict(like.metrics_ports)
    return c


def test_data_dir_of_another_cluster_with_the_same_peers_is_refused(tmp_path: Path) -> None:
    a = _found(tmp_path / "a").start_all()
    try:
        _all_recorded(a, [1, 2, 3])
        with a.client() as c:
            c.put("from", "A")
        a_id = a.status(1).cluster_id
    finally:
        a.stop_all()
    b = _found(tmp_path / "b", like=a).start_all()
    try:
        _all_recorded(b, [1, 2, 3])
        with b.client() as c:
            c.put("from", "B")
        b_id = b.status(1).cluster_id
        assert a_id and b_id and a_id != b_id  # same --peers, separately founded: different clusters
        assert b.stop(3) == 0
        shutil.rmtree(b.root / "node3")
        shutil.copytree(a.root / "node3", b.root / "node3")
        b.start(3)
        _wait_for(lambda: "another cluster" in b.log_text(1) + b.log_text(2), "B to refuse A's node 3")
        _wait_for(lambda: bool(b.status(3).identity_problem), "A's node 3 to report it is refused")
        assert b.status(3).cluster_id == a_id
        with b.client() as c:
            assert c.get("from").kv.value == b"B"
            c.put("still", "writable")
        assert _leader_among(b, [1, 2, 3]) in (1, 2)
    finally:
        b.stop_all()


def test_with_a_token_foreign_data_is_refused_at_start(tmp_path: Path) -> None:
    a = _found(tmp_path / "a", extra=["--initial-cluster-token", "cluster-a"]).start_all()
    try:
        with a.client() as c:
            c.put("from", "A")
    finally:
        a.stop_all()
    b = _found(tmp_path / "b", like=a, extra=["--initial-cluster-token", "cluster-b"]).start_all()
    try:
        assert b.status(1).cluster_id != b""  # known from the first second: derived from peers and token
        assert b.stop(3) == 0
        shutil.rmtree(b.root / "node3")
        shutil.copytree(a.root / "node3", b.root / "node3")
        b.start(3)
        assert b.procs[3].wait(30) == exit_codes.NEEDS_OPERATOR
        errors = [ln for ln in b.log_text(3).splitlines() if ln.startswith("Error:")]
        assert len(errors) == 1 and "belongs to cluster" in errors[0] and "data.mdb" in errors[0]
        assert "Traceback" not in b.log_text(3)
    finally:
        b.stop_all()


def test_a_founder_that_never_recorded_the_cluster_id_still_helps_elect_a_leader(tmp_path: Path) -> None:
    """Node 3 is a founder that was down while nodes 1 and 2 formed the cluster and recorded its id (as one
    killed right after formation, before the identity record reached it). With node 1 gone too, nodes 2
    and 3 are a majority: 3's requests carry no cluster id and are not taken, but its answers must be,
    or 2 never gets the vote it needs and the cluster stays without a leader."""
    c = LocalCluster(tmp_path)
    try:
        c.start(1)
        c.start(2)
        c.wait_leader(among=[1, 2])
        _wait_for(lambda: all(c.status(i).cluster_id for i in (1, 2)), "nodes 1 and 2 to record the cluster id")
        with c.client() as cl:
            cl.put("before", "1")
        c.kill(c.wait_leader(among=[1, 2]))
        other = next(i for i, p in c.procs.items() if p.poll() is None)
        assert c.stop(other) == 0
        # 3 comes up alone and campaigns for a while (as a founder does whose peers are slow to return),
        # then the survivor returns: both campaign, and 3's answers travel beside its own requests.
        c.start(3)
        time.sleep(3.0)
        c.start(other)
        survivors = [i for i, p in c.procs.items() if p.poll() is None]
        assert 3 in survivors and len(survivors) == 2
        leader = c.wait_leader(among=survivors, timeout=30)
        assert leader in survivors
        with Client(c.address(leader), timeout=10) as cl:
            assert cl.get("before").kv.value == b"1"
            cl.put("after", "2")
        _wait_for(lambda: c.status(3).cluster_id == c.status(leader).cluster_id, "node 3 to learn the cluster id")
    finally:
        c.stop_all()


def test_a_second_process_cannot_take_the_port(cluster: LocalCluster, tmp_path: Path) -> None:
    with cluster.client() as c:
        c.put("only", "one")
    cmd = [sys.executable, "-m", "raftkv.cli.server_main", "serve", "--id", "1", "--data-dir",
           str(tmp_path / "intruder"), "--listen", cluster.address(1), "--log-format", "json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == exit_codes.RETRY, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "in use" in errors[0] and cluster.address(1) in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    # The first process still serves every read on that port.
    with Client(cluster.address(1), timeout=5) as c:
        for _ in range(40):
            r1 = c.get("only", consistency="serializable", endpoint=cluster.address(1))
            assert r1.kv.value == b"one"
