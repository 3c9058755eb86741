"""The end-of-run comparison of every member's state (checkers/members.py) on real nodes: members that
agree pass, and a member whose event loop stands still through one range's deadline is asked again and
passes, its retry reported. (A member that differs: the data-fault nemeses of the partition suite.)"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.local_cluster import LocalCluster

from .checkers import members as members_checker


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(Path(tmp_path_factory.mktemp("members-agree"))).start_all()
    try:
        with c.client() as cl:
            for i in range(20):
                cl.put(f"k{i}", f"v{i}")
        yield c
    finally:
        c.stop_all()


def _members(c: LocalCluster) -> dict[int, str]:
    return {i: c.address(i) for i in sorted(c.procs)}


def test_members_that_agree_pass(cluster: LocalCluster) -> None:
    v = members_checker.check_members_agree(_members(cluster), cluster.wait_leader())
    assert v.valid, v.anomalies
    assert v.stats["keys"] >= 20 and v.stats["range_retries"] == {}


def test_a_member_stalled_through_one_ranges_deadline_is_asked_again(cluster: LocalCluster,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    leader = cluster.wait_leader()
    stalled = next(i for i in sorted(cluster.procs) if i != leader)
    real = members_checker.full_range
    first = True

    def full_range(client, endpoint, page=500):  # noqa: ANN001, ANN202 - the checker's own signature
        nonlocal first
        if endpoint == cluster.address(stalled) and first:
            first = False
            cluster.signal(stalled, signal.SIGSTOP)  # its loop stands still longer than a range may take
            threading.Timer(6.0, cluster.signal, (stalled, signal.SIGCONT)).start()
        return real(client, endpoint, page)

    monkeypatch.setattr(members_checker, "full_range", full_range)
    v = members_checker.check_members_agree(_members(cluster), leader)
    assert v.valid, v.anomalies
    assert v.stats["range_retries"] == {stalled: 1}
    assert stalled in v.stats["compared"]

