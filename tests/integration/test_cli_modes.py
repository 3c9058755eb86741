"""The `kv` tool's ack levels, read levels, session tokens, member marks and live lag table, run as a user
runs them against real processes."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from .local_cluster import LocalCluster
from .observe import wait_for
from .test_cli import kv


def _token(out: str) -> str:
    return next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("session-token: "))


def test_ack_levels_from_the_cli_with_a_stopped_follower(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    stopped = next(i for i in (1, 2, 3) if i != leader)
    at_leader = cluster.address(leader)
    r = kv(cluster, "members", "update", str(stopped), "--semi-sync")
    assert r.returncode == 0 and f"{stopped}, {cluster.address(stopped)}, voter, semi_sync" in r.stdout
    # Changing the address only keeps the mark (a mark not named keeps its value).
    r = kv(cluster, "members", "update", str(stopped), "--address", cluster.address(stopped))
    assert r.returncode == 0 and f"{stopped}, {cluster.address(stopped)}, voter, semi_sync" in r.stdout
    r = kv(cluster, "-w", "json", "put", "fast", "1", "--ack", "leader")
    meta = json.loads(r.stdout)["meta"]
    assert meta["ack_achieved"] == "ACK_LEADER" and meta["may_be_lost"] is True
    r = kv(cluster, "-w", "json", "put", "safe", "1")
    assert "may_be_lost" not in json.loads(r.stdout)["meta"]  # false: proto3 JSON leaves it out
    cluster.signal(stopped, signal.SIGSTOP)
    try:
        r = kv(None, "put", "s", "1", "--ack", "sync", "--timeout-ms", "500", endpoints=at_leader)
        assert r.returncode != 0 and r.stderr.startswith("Error: sync write committed at index ")
        assert len(r.stderr.strip().splitlines()) == 1 and "confirmed by" in r.stderr
        assert kv(None, "get", "s", endpoints=at_leader).stdout == "s\n1\n"  # committed all the same
        r = kv(None, "put", "ss", "1", "--ack", "semi_sync", "--timeout-ms", "200", endpoints=at_leader)
        assert r.returncode == 0 and "ack majority, DEGRADED" in r.stdout
        r = kv(None, "del", "ss", "--ack", "semi_sync", "--timeout-ms", "200", endpoints=at_leader)
        assert r.returncode == 0 and r.stdout.strip() == "1"
        r = kv(None, "put", "m", "1", "--ack", "majority", endpoints=at_leader)
        assert r.returncode == 0 and "DEGRADED" not in r.stdout
    finally:
        cluster.signal(stopped, signal.SIGCONT)


def test_session_tokens_printed_and_accepted_by_every_command(cluster: LocalCluster) -> None:
    r = kv(cluster, "put", "tok", "1", "--print-token")
    t_put = _token(r.stdout)
    r = kv(cluster, "txn", "--compare", "value(tok) = 1", "--then", "put tok 2", "--print-token")
    assert r.stdout.startswith("SUCCESS")
    t_txn = _token(r.stdout)
    r = kv(cluster, "del", "gone", "--print-token")
    t_del = _token(r.stdout)
    for node in (1, 2, 3):
        ep = cluster.address(node)
        for t in (t_put, t_txn, t_del):
            r = kv(None, "get", "tok", "--consistency", "session", "--session-token", t, "--print-token", endpoints=ep)
            assert r.returncode == 0 and r.stdout.startswith("tok\n"), r.stderr
        r = kv(None, "get", "tok", "--consistency", "session", "--session-token", t_txn, endpoints=ep)
        assert r.stdout == "tok\n2\n"  # the transaction's write is seen on every node
        r = kv(None, "range", "tok", "--prefix", "--consistency", "session", "--session-token", t_txn,
               "--print-token", endpoints=ep)
        assert r.stdout.startswith("tok\n2\n") and _token(r.stdout)
    r = kv(cluster, "get", "tok", "--consistency", "session", "--session-token", "bm90LWEtdG9rZW4")
    assert r.returncode != 0 and r.stderr.startswith("Error: session token must be") and "Traceback" not in r.stderr
    r = kv(cluster, "get", "tok", "--consistency", "bounded_staleness", "--max-staleness-ms", "5000",
           endpoints=cluster.address(2))
    assert r.returncode == 0 and r.stdout == "tok\n2\n"


def test_lag_watch_prints_a_table_per_refresh(cluster: LocalCluster) -> None:
    kv(cluster, "put", "x", "1")
    r = kv(cluster, "lag", "--watch", "--interval", "0.1", "--count", "3")
    assert r.returncode == 0
    assert r.stdout.count("| FOLLOWER") == 3 and r.stdout.count("(Ctrl-C to stop)") == 3
    assert r.stdout.count("| voter") == 6
    r = kv(cluster, "lag", "--watch", "--interval", "0")
    assert r.returncode == 2 and r.stderr.startswith("Error: --interval")


def test_lease_reads_and_default_ack_follow_server_flags(tmp_path: Path) -> None:
    on = LocalCluster(tmp_path, extra=["--lease-reads", "--lease-drift-ticks", "3", "--default-ack", "sync"])
    on.start_all()
    try:
        r = kv(on, "put", "k", "v")
        assert r.returncode == 0 and "ack sync" in r.stdout and "confirmed by 1,2,3" in r.stdout
        leader = on.wait_leader()
        follower = next(i for i in (1, 2, 3) if i != leader)

        def lease_read(node: int) -> dict | None:
            r = kv(None, "-w", "json", "get", "k", "--consistency", "lease", endpoints=on.address(node))
            assert r.returncode == 0, r.stderr
            doc = json.loads(r.stdout)
            assert doc["kv"]["value"] and int(doc["meta"]["served_by"]) == leader
            # Until the new leader's first quorum round confirms its lease, it falls back to a quorum read.
            assert doc["meta"]["consistency_achieved"] in ("LEASE", "LINEARIZABLE")
            return doc if doc["meta"]["consistency_achieved"] == "LEASE" else None

        # A healthy leader holds its lease soon after its election: answered locally, served as LEASE,
        # both on the leader and forwarded there by a follower.
        for node in (leader, follower):
            wait_for(f"a lease read through node {node} served as LEASE", lambda node=node: lease_read(node),
                     timeout=10, every=0.2)
    finally:
        on.stop_all()
    (tmp_path / "off").mkdir()
    off = LocalCluster(tmp_path / "off", n=1).start_all()
    try:
        r = kv(off, "get", "k", "--consistency", "lease")
        assert r.returncode != 0 and r.stderr.startswith("Error: lease reads are disabled")
    finally:
        off.stop_all()


def test_a_hung_first_endpoint_does_not_swallow_reads(cluster: LocalCluster) -> None:
    """A paused node keeps its port open, so connecting works and nothing answers. Reads and admin reads
    give it a share of the deadline and move on to the next endpoint."""
    leader = cluster.wait_leader()
    hung = next(i for i in (1, 2, 3) if i != leader)
    eps = ",".join(cluster.address(i) for i in [hung] + [i for i in (1, 2, 3) if i != hung])
    assert kv(None, "put", "h", "1", endpoints=cluster.address(leader)).returncode == 0
    cluster.signal(hung, signal.SIGSTOP)
    try:
        r = kv(None, "get", "h", endpoints=eps)
        assert r.returncode == 0 and r.stdout == "h\n1\n", r.stderr
        r = kv(None, "-w", "json", "lag", endpoints=eps)
        assert r.returncode == 0 and int(json.loads(r.stdout)["leader_id"]) == leader, r.stderr
    finally:
        cluster.signal(hung, signal.SIGCONT)
