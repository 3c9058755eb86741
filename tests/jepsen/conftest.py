"""Fixtures for the tests that need network namespaces.

Not root: skipped, with the reason. Root (as in CI) but namespaces, veth or iptables unusable: the
tests fail, loudly: the partition suite is part of what `make test` promises."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .nodes import Cluster
from .topology import Topology, check_environment

PREFIX = "rkvjt"  # distinct from the matrix's `rkvjm`, so `make jepsen` and `make test` can coexist
NET = 2


@pytest.fixture
def namespaces() -> None:
    if os.geteuid() != 0:
        pytest.skip("the partition suite needs root for network namespaces and iptables")
    check_environment()


@pytest.fixture
def ns_cluster(namespaces: None, tmp_path: Path) -> Iterator[Cluster]:
    topo = Topology(PREFIX, 5, NET).setup()
    cluster = Cluster(topo, tmp_path / "nodes")
    try:
        cluster.start_all()
        cluster.wait_leader(60)
        yield cluster
    finally:
        cluster.stop_all()
        topo.teardown()
