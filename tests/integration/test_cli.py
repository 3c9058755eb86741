"""The `kv` tool against a live cluster, as a user runs it: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from .local_cluster import LocalCluster


def kv(cluster: LocalCluster | None, *args: str, endpoints: str | None = None, env_endpoints: bool = False
       ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    eps = endpoints or (cluster.endpoints if cluster else "127.0.0.1:1")
    cmd = [sys.executable, "-m", "raftkv.cli.kv", "--command-timeout", "10"]
    if env_endpoints:
        env["KV_ENDPOINTS"] = eps
    else:
        cmd += ["--endpoints", eps]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=60, env=env)


def test_put_get_range_del(cluster: LocalCluster) -> None:
    r = kv(cluster, "put", "greeting", "hello")
    assert r.returncode == 0 and r.stdout.startswith("OK (index ") and "ack majority" in r.stdout
    r = kv(cluster, "get", "greeting", env_endpoints=True)
    assert r.returncode == 0 and r.stdout == "greeting\nhello\n"
    for k in ("fruit/apple", "fruit/banana", "veg/leek"):
        assert kv(cluster, "put", k, "1").returncode == 0
    r = kv(cluster, "range", "fruit/", "--prefix", "--keys-only")
    assert r.stdout.split() == ["fruit/apple", "fruit/banana"]
    r = kv(cluster, "-w", "json", "range", "fruit/", "--prefix", "--count-only")
    assert json.loads(r.stdout)["count"] == "2"
    r = kv(cluster, "-w", "table", "get", "greeting")
    assert "| KEY" in r.stdout and "hello" in r.stdout
    r = kv(cluster, "get", "greeting", "--consistency", "serializable", endpoints=cluster.address(3))
    assert r.stdout == "greeting\nhello\n"
    r = kv(cluster, "del", "fruit/", "--prefix")
    assert r.returncode == 0 and r.stdout.strip() == "2"
    assert kv(cluster, "get", "fruit/apple").stdout == ""


def test_txn_and_session_token(cluster: LocalCluster) -> None:
    kv(cluster, "put", "balance", "1000")
    r = kv(cluster, "txn", "--compare", "value(balance) = 1000", "--then", "put balance 900", "--else", "get balance")
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "SUCCESS"
    r = kv(cluster, "txn", "--compare", "value(balance) = 1000", "--then", "put balance 800", "--else", "get balance")
    assert r.stdout.splitlines() == ["FAILURE", "balance", "900"]
    r = kv(cluster, "put", "mine", "v1", "--print-token")
    token = r.stdout.strip().splitlines()[-1].split(": ")[1]
    r = kv(cluster, "get", "mine", "--consistency", "session", "--session-token", token, endpoints=cluster.address(2))
    assert r.returncode == 0 and r.stdout == "mine\nv1\n"


def test_leader_ack_warns_that_it_can_be_lost(cluster: LocalCluster) -> None:
    r = kv(cluster, "put", "fast", "1", "--ack", "leader")
    assert r.returncode == 0 and "ack leader" in r.stdout and "lost if the leader fails" in r.stderr


def test_status_and_lag(cluster: LocalCluster) -> None:
    kv(cluster, "put", "x", "1")
    r = kv(cluster, "status", "-w", "table")  # as the README shows it
    assert r.returncode == 0
    assert "| ENDPOINT" in r.stdout and r.stdout.count("leader") >= 1 and r.stdout.count("follower") == 2
    doc = json.loads(kv(cluster, "-w", "json", "status").stdout)
    assert len(doc) == 3 and len({d["leader_id"] for d in doc}) == 1
    r = kv(cluster, "lag")
    assert r.returncode == 0 and "FOLLOWER" in r.stdout and "replicate" in r.stdout


def test_errors_are_one_line_with_nonzero_exit(cluster: LocalCluster) -> None:
    r = kv(None, "get", "x", endpoints="127.0.0.1:1")
    assert r.returncode != 0 and r.stderr.startswith("Error: ") and len(r.stderr.strip().splitlines()) == 1
    r = kv(cluster, "put", "k" * 5000, "v")
    assert r.returncode != 0 and r.stderr.startswith("Error: ") and "4096" in r.stderr
    assert "Traceback" not in r.stderr
    r = kv(cluster, "get", "x", "--consistency", "bounded_staleness")
    assert r.returncode == 2 and "max-staleness-ms" in r.stderr
    r = kv(cluster, "txn", "--compare", "nonsense")
    assert r.returncode == 2 and r.stderr.startswith("Error: cannot parse compare")


def test_member_add_join_promote_remove(cluster: LocalCluster) -> None:
    kv(cluster, "put", "before-join", "1")
    cluster.add_node(4)
    r = kv(cluster, "members", "add", "4", cluster.address(4), "--learner")
    assert r.returncode == 0, r.stderr
    assert f"4, {cluster.address(4)}, learner" in r.stdout
    cluster.start(4, join=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        r = kv(cluster, "get", "before-join", "--consistency", "serializable", endpoints=cluster.address(4))
        if r.stdout == "before-join\n1\n":
            break
        time.sleep(0.2)
    assert r.stdout == "before-join\n1\n", "the new learner did not catch up"
    r = kv(cluster, "members", "promote", "4")
    assert r.returncode == 0 and f"4, {cluster.address(4)}, voter" in r.stdout
    r = kv(cluster, "members", "remove", "1")
    assert r.returncode == 0, r.stderr
    ids = [line.split(",")[0] for line in kv(cluster, "members", "list").stdout.splitlines()]
    assert ids == ["2", "3", "4"]
    eps = ",".join(cluster.address(i) for i in (2, 3, 4))
    assert kv(None, "put", "after-remove", "ok", endpoints=eps).returncode == 0
    assert kv(None, "get", "after-remove", endpoints=eps).stdout == "after-remove\nok\n"
