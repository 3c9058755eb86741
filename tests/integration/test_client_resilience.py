"""The client's resilience on real nodes, one cluster for the module:

- its circuit breaker against a real endpoint that is down: it opens after consecutive failures (later
  calls are not sent there, and fail fast when pinned to it), and closes again through a half-open probe
  once the node is back; `kv -w json status` reports the breaker of an unreachable node;
- exactly-once writes (Raft dissertation §6.3): a numbered write retried after its outcome became unknown
  (its leader killed -9 with the write proposed) is applied once; a duplicate is answered with the first
  result; sessions survive a snapshot and a restart of every node, and expire by the leader's committed
  decision. A key's `version` counts the puts applied to it: it equals the number of logical writes only
  if no retry was applied twice."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from raftkv.client import BreakerSettings, CircuitOpenError, Client, RaftKVError, UnavailableError
from raftkv.proto.stubs import kv_pb2 as pb
from raftkv.proto.stubs import kv_pb2_grpc, overload_pb2, overload_pb2_grpc

from .local_cluster import LocalCluster
from .observe import wait_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("resilience"), extra=["--snapshot-keep-entries", "0"]).start_all()
    try:
        yield c
    finally:
        c.stop_all()


def test_breaker_opens_on_a_down_endpoint_skips_it_and_closes_after_it_returns(cluster: LocalCluster) -> None:
    down = 3
    cluster.kill(down)
    gone = cluster.address(down)
    try:
        # Pinned to the down node: each call fails; the fifth opens the breaker.
        with Client(gone, timeout=2, connect_timeout=0.3,
                    breaker=BreakerSettings(failures=5, cooldown_s=30)) as pinned:
            for _ in range(5):
                with pytest.raises(UnavailableError):
                    pinned.status(endpoint=gone, timeout=1)
            assert "OPEN" in repr(pinned)
            before = pinned.metrics()["breakers"][gone]
            assert before["state"] == "OPEN" and before["consecutive_failures"] == 5 and before["opened"] == 1
            with pytest.raises(CircuitOpenError) as e:  # not sent: its cool-down ends after the deadline
                pinned.status(endpoint=gone, timeout=1)
            assert e.value.breakers == {gone: "OPEN"} and "circuit breaker open" in str(e.value)
            after = pinned.metrics()["breakers"][gone]
            assert after["failures"] == before["failures"] and after["rejected"] == 1
        # Unpinned, the down node first in the list: once its breaker is open, calls go to the others
        # without trying it.
        endpoints = [gone] + [cluster.address(i) for i in sorted(cluster.ports) if i != down]
        with Client(endpoints, timeout=10, connect_timeout=0.3,
                    breaker=BreakerSettings(failures=3, cooldown_s=0.5)) as c:
            for i in range(10):
                c.put(f"breaker{i}", "v")
                c.endpoints.leader = None  # start at the down node's turn again
                c.endpoints.current = 0
            stats = c.metrics()["breakers"]
            assert stats[gone]["state"] == "OPEN" and stats[gone]["opened"] >= 1
            assert stats[gone]["failures"] < 10  # not tried on every call
            # Back: after its cool-down the next call through it is a half-open probe, which closes it.
            cluster.start(down)
            wait_for("node 3 back", lambda: _answers(cluster, down), timeout=30)
            wait_for("node 3's breaker closed", lambda: _probe(c, gone), timeout=30, every=0.2)
            assert c.metrics()["breakers"][gone]["state"] == "CLOSED"
    finally:
        if cluster.procs[down].poll() is not None:
            cluster.start(down)


def _answers(cluster: LocalCluster, i: int) -> bool:
    try:
        cluster.status(i)
        return True
    except RaftKVError:
        return False


def _probe(c: Client, address: str) -> bool:
    try:
        c.status(endpoint=address, timeout=2)
    except RaftKVError:
        return False
    return c.resilience.breaker(address).state.value == "CLOSED"


def test_kv_json_status_shows_the_breaker_of_an_unreachable_endpoint(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.wait_leader()
    cluster.kill(2)
    try:
        kv = [sys.executable, "-m", "raftkv.cli.kv", "--endpoints", cluster.endpoints, "--dial-timeout", "0.5"]
        out = subprocess.run([*kv, "-w", "json", "status"], capture_output=True, timeout=60, text=True)
        assert out.returncode == 0, out.stderr
        rows = {r["endpoint"]: r for r in json.loads(out.stdout)}
        row = rows[cluster.address(2)]
        assert row["error"] == "unreachable" and row["breaker"]["state"] in ("CLOSED", "OPEN")
        assert row["breaker"]["consecutive_failures"] >= 1 and row["message"]
        assert rows[cluster.address(1)]["pressure"] in ("GREEN", "YELLOW", "RED")
    finally:
        cluster.start(2)


# -- exactly-once writes ------------------------------------------------------------------------------------
def _register(address: str, ttl: int = 60) -> int:
    with grpc.insecure_channel(address) as ch:
        return overload_pb2_grpc.SessionsStub(ch).Register(overload_pb2.RegisterSessionRequest(ttl_seconds=ttl),
                                                           timeout=10).session_id


def _numbered_put(address: str, key: bytes, session: int, seq: int) -> pb.PutResponse:
    with grpc.insecure_channel(address) as ch:
        return kv_pb2_grpc.KVStub(ch).Put(pb.PutRequest(key=key, value=b"v", prev_kv=True, write=pb.WriteOptions(
            client_session=session, sequence=seq)), timeout=10)


def _version(c: LocalCluster, key: str) -> int:
    with c.client() as cl:
        return cl.get(key).kv.version


def test_a_duplicate_is_answered_with_the_first_result_and_applied_once(cluster: LocalCluster) -> None:
    addr = cluster.address(cluster.wait_leader())
    sid = _register(addr)
    first = _numbered_put(addr, b"dup", sid, 1)
    again = _numbered_put(addr, b"dup", sid, 1)
    assert again.meta.index > first.meta.index  # a second entry, answered from the first one's result
    assert (again.prev_kv, _version(cluster, "dup")) == (first.prev_kv, 1)
    _numbered_put(addr, b"dup", sid, 2)
    assert _version(cluster, "dup") == 2
    with pytest.raises(grpc.RpcError) as e:
        _numbered_put(addr, b"dup", sid + 12345, 1)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "unknown" in e.value.details()


def test_a_write_retried_after_its_leader_was_killed_is_applied_once(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    followers = [i for i in sorted(cluster.ports) if i != leader]
    logical = 0
    with Client(cluster.endpoints, timeout=30, exactly_once=True) as c:
        for _ in range(3):
            c.put("counter", "x")
            logical += 1
        before = cluster.status(leader).last_index
        for i in followers:  # the next write reaches the leader's log, and no further for now
            cluster.signal(i, signal.SIGSTOP)
        outcome: dict[str, Any] = {}

        def write() -> None:
            try:
                outcome["reply"] = c.put("counter", "x")
            except RaftKVError as err:
                outcome["error"] = err

        t = threading.Thread(target=write)
        t.start()
        logical += 1
        try:
            wait_for("the write proposed on the leader", lambda: cluster.status(leader).last_index > before)
            cluster.kill(leader)  # the reply is lost: the client sees its connection break
        finally:
            for i in followers:
                cluster.signal(i, signal.SIGCONT)
        cluster.start(leader)
        t.join(60)
        assert not t.is_alive()
        assert "reply" in outcome, outcome.get("error")
        assert c.metrics()["outcome_unknown_retries"] >= 1
        for _ in range(2):
            c.put("counter", "x")
            logical += 1
    cluster.wait_leader()
    assert _version(cluster, "counter") == logical


def test_sessions_survive_a_snapshot_and_a_restart_of_every_node(cluster: LocalCluster) -> None:
    addr = cluster.address(cluster.wait_leader())
    sid = _register(addr)
    first = _numbered_put(addr, b"snap", sid, 1)
    for i in sorted(cluster.ports):
        cluster.wait_applied(i, first.meta.index)
        with Client(cluster.address(i), timeout=10) as c:
            assert c.snapshot(endpoint=cluster.address(i)).index >= first.meta.index
    cluster.stop_all()
    for i in sorted(cluster.ports):
        cluster.start(i)
    addr = cluster.address(cluster.wait_leader(timeout=30))
    again = wait_for("a leader answering", lambda: _try(lambda: _numbered_put(addr, b"snap", sid, 1)))
    assert again.prev_kv == first.prev_kv and _version(cluster, "snap") == 1


def test_an_idle_session_expires_by_the_leaders_decision(cluster: LocalCluster) -> None:
    addr = cluster.address(cluster.wait_leader())
    sid = _register(addr, ttl=1)
    _numbered_put(addr, b"ttl", sid, 1)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            _numbered_put(addr, b"ttl", sid, 1)  # answered from the kept result while the session lives
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "unknown" in e.details()
            break
        time.sleep(0.3)
    else:
        raise AssertionError("the session never expired")
    assert _version(cluster, "ttl") == 1


def _try(fn: Any) -> Any:
    try:
        return fn()
    except grpc.RpcError:
        return None


def _connections_to(port: int) -> int:
    """Established TCP connections from this process to `port` (from `ss`)."""
    import os

    out = subprocess.run(["ss", "-Htnp", "state", "established", "dport", f"= :{port}"], capture_output=True,
                         text=True, timeout=10, check=True).stdout
    return sum(1 for line in out.splitlines() if f"pid={os.getpid()}," in line)


def test_each_client_owns_its_connections(cluster: LocalCluster) -> None:
    """Two clients of one process to one node do not share a connection: one client's stuck connection
    (or a watch it never closed) cannot stall the other's calls."""
    node = sorted(cluster.procs)[0]
    addr, port = cluster.address(node), cluster.ports[node]
    before = _connections_to(port)
    with Client(addr, timeout=10) as a, Client(addr, timeout=10) as b:
        a.get("k", consistency="serializable", endpoint=addr)
        b.get("k", consistency="serializable", endpoint=addr)
        assert _connections_to(port) - before == 2
    from raftkv.tls import CLIENT_CHANNEL_OPTIONS

    assert dict(CLIENT_CHANNEL_OPTIONS)["grpc.keepalive_time_ms"] <= 10_000  # a dead connection is noticed
