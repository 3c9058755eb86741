"""Exactly-once writes on real nodes (Raft dissertation §6.3): a numbered write retried after its outcome
became unknown (its leader killed -9 with the write proposed) is applied once; a duplicate is answered
with the first result; sessions survive a snapshot and a restart of every node, and expire by the
leader's committed decision.

A key's `version` counts the puts applied to it: it equals the number of logical writes only if no
retry was applied twice."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from raftkv.client import Client, RaftKVError
from raftkv.proto.stubs import kv_pb2 as pb
from raftkv.proto.stubs import kv_pb2_grpc, overload_pb2, overload_pb2_grpc

from .local_cluster import LocalCluster
from .observe import wait_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("exactly-once"), extra=["--snapshot-keep-entries", "0"]).start_all()
    try:
        yield c
    finally:
        c.stop_all()


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
    for i in sorted(cluster.ports):
        cluster.stop(i)
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
