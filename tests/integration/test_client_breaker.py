"""The client's circuit breaker against a real endpoint that is down: it opens after consecutive
failures (later calls are not sent there, and fail fast when pinned to it), and closes again through a
half-open probe once the node is back. `kv -w json status` reports the breaker of an unreachable node."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftkv.client import BreakerSettings, CircuitOpenError, Client, RaftKVError, UnavailableError

from .local_cluster import LocalCluster
from .observe import wait_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("breaker")).start_all()
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
