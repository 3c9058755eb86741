"""Reads a follower cannot serve are forwarded to the leader, and `--read-wait-ms` is how long it first
waits to catch up (README: "otherwise it waits briefly (`--read-wait-ms`), then forwards to the leader").

A real cut: in the follower's namespace, packets from the leader to the follower's gRPC port are dropped,
so the leader's appends and heartbeats never arrive, while the follower can still reach the leader (its
own connections, and the forwarded reads on them). Clients reach every node from the bridge. The election
timeout is long, so the cut-off follower keeps knowing its leader for the whole test."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftkv.client import Client, FailedPreconditionError, RaftKVError

from .conftest import running_cluster
from .nodes import PORT, Cluster, Node

READ_WAIT_MS = 1500
FLAGS = ["--election-ticks", "400", "--read-wait-ms", str(READ_WAIT_MS)]  # an 8 s election timeout


@pytest.fixture
def cluster3(namespaces: None, tmp_path: Path) -> Iterator[Cluster]:
    yield from running_cluster(tmp_path, 3, FLAGS)


def _cut(cluster: Cluster, leader: Node, follower: Node) -> None:
    cluster.topo.iptables_in(follower.slot, "-A", "INPUT", "-s", cluster.topo.ip(leader.slot), "-p", "tcp",
                             "--dport", str(PORT), "-j", "DROP")


def _value_on(c: Client, node: Node, key: str) -> bytes | None:
    try:
        r = c.get(key, consistency="serializable", endpoint=node.address, timeout=1)
    except RaftKVError:
        return None
    return r.kv.value if r.found else None


def _wait_value(c: Client, node: Node, key: str, value: bytes, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while _value_on(c, node, key) != value:
        assert time.monotonic() < deadline, f"node {node.id} never applied {key}={value!r}"
        time.sleep(0.05)


def test_a_follower_waits_read_wait_ms_then_forwards_to_the_leader(cluster3: Cluster) -> None:
    cluster = cluster3
    leader = cluster.wait_leader()
    follower = next(n for n in cluster.nodes.values() if n is not leader)
    with Client([leader.address], timeout=10) as w, Client([follower.address], timeout=15) as c:
        w.put("k", "1")
        _wait_value(c, follower, "k", b"1")

        # 1. Waiting helps: the follower is behind the session token when the read arrives, the link comes
        #    back 0.3 s later, well inside --read-wait-ms: it catches up and serves the read itself.
        _cut(cluster, leader, follower)
        token = w.put("k", "2").meta.session_token
        got: list[object] = []
        reader = threading.Thread(target=lambda: got.append(_session_read(c, follower, token)))
        reader.start()
        time.sleep(0.3)
        cluster.topo.flush_rules(follower.slot)
        reader.join(20)
        r = got[0]
        assert not isinstance(r, Exception), r
        assert r.kv.value == b"2" and r.meta.served_by == follower.id  # type: ignore[union-attr]
        _wait_value(c, follower, "k", b"2")

        # 2. It cannot catch up within the wait: the reads go to the leader, which serves current data.
        _cut(cluster, leader, follower)
        try:
            token = w.put("k", "3").meta.session_token
            r = _session_read(c, follower, token)
            assert not isinstance(r, Exception), r
            assert r.kv.value == b"3" and r.meta.served_by == leader.id
            assert _value_on(c, follower, "k") == b"2"  # the follower itself really is behind
            b = c.get("k", consistency="bounded_staleness", max_staleness_ms=300, endpoint=follower.address,
                      timeout=15)
            assert b.kv.value == b"3" and b.meta.served_by == leader.id
            with pytest.raises(FailedPreconditionError):  # strict: no forwarding, and no local answer either
                c.get("k", consistency="bounded_staleness", max_staleness_ms=300, strict=True,
                      endpoint=follower.address, timeout=15)
            assert cluster.status(follower, 2).leader_id == leader.id  # it still knew its leader throughout
        finally:
            cluster.topo.flush_rules(follower.slot)
        _wait_value(c, follower, "k", b"3")


def _session_read(c: Client, node: Node, token: bytes) -> object:
    try:
        return c.get("k", consistency="session", session_token=token, endpoint=node.address, timeout=15)
    except RaftKVError as e:
        return e
