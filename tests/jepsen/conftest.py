"""Fixtures for the tests that need network namespaces.

Not root: skipped, with the reason. Root (as in CI) but namespaces, veth or iptables unusable: the
tests fail, loudly: the partition suite is part of what `make test` promises."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .nodes import Cluster
from .topology import Topology, check_environment

PREFIX = "rkvjt"  # distinct from the matrix's `rkvjm`, so `make jepsen` and `make test` can coexist
NET = 2


# The tests share one set of namespace names and addresses: under `make test`'s pytest-xdist workers, a
# test holds this lock from before its topology is built until after it is torn down, so two never overlap.
LOCK = "/tmp/raftkv-test-namespaces.lock"


@pytest.fixture
def namespaces() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("the partition suite needs root for network namespaces and iptables")
    check_environment()
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def running_cluster(tmp_path: Path, size: int, extra: list[str] | None = None) -> Iterator[Cluster]:
    """`size` real nodes in their own namespaces, started with a leader elected; stopped and the namespaces
    torn down afterwards. Call only under the `namespaces` fixture (it holds the lock)."""
    topo = Topology(PREFIX, size, NET).setup()
    cluster = Cluster(topo, tmp_path / "nodes", extra=extra)
    try:
        cluster.start_all()
        cluster.wait_leader(60)
        yield cluster
    finally:
        cluster.stop_all()
        topo.teardown()


@pytest.fixture
def ns_cluster(namespaces: None, tmp_path: Path) -> Iterator[Cluster]:
    yield from running_cluster(tmp_path, 5)
