"""The README's semi-sync and sync sets on real processes: with no member marked `--semi-sync`, the other
voters make up the semi-sync set and `min_replicas` counts them (more than one too); a learner marked
`--sync` joins the sync set, so a `sync` write waits for it, and unmarking it takes it out again."""

from __future__ import annotations

import signal

import pytest

from raftkv.client import Client, SyncTimeoutError
from raftkv.proto.stubs import kv_pb2 as pb

from .local_cluster import LocalCluster
from .test_cli import kv


def test_default_semi_sync_set_is_the_other_voters_and_min_replicas_counts_them(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    a, b = (i for i in (1, 2, 3) if i != leader)
    with Client(cluster.address(leader), timeout=15) as c:
        assert not any(m.semi_sync for m in c.members().members)  # nobody marked
        both = c.put("two", "v", ack="semi_sync", min_replicas=2, timeout_ms=5000)
        assert both.meta.ack_achieved == pb.ACK_SEMI_SYNC and not both.meta.degraded
        assert sorted(both.meta.confirmed_by) == [1, 2, 3]
        cluster.wait_applied(a, both.meta.index)
        cluster.signal(a, signal.SIGSTOP)
        try:
            # One of the two others suffices for min_replicas=1: the unmarked voter b counts.
            one = c.put("one", "v", ack="semi_sync", min_replicas=1, timeout_ms=5000)
            assert one.meta.ack_achieved == pb.ACK_SEMI_SYNC and not one.meta.degraded
            assert b in one.meta.confirmed_by and a not in one.meta.confirmed_by
            # min_replicas=2 needs a as well: it degrades to majority.
            two = c.put("two-again", "v", ack="semi_sync", min_replicas=2, timeout_ms=300)
            assert two.meta.degraded and two.meta.ack_achieved == pb.ACK_MAJORITY
            assert sorted(two.meta.confirmed_by) == sorted([leader, b])
        finally:
            cluster.signal(a, signal.SIGCONT)


def test_a_learner_marked_sync_is_waited_for_by_sync_writes(cluster: LocalCluster) -> None:
    cluster.add_node(4)
    r = kv(cluster, "members", "add", "4", cluster.address(4), "--learner", "--sync")
    assert r.returncode == 0 and f"4, {cluster.address(4)}, learner, sync" in r.stdout, (r.stdout, r.stderr)
    cluster.start(4, join=True)
    with cluster.client() as c:
        s = c.put("all", "v", ack="sync", timeout_ms=10_000)
        assert sorted(s.meta.confirmed_by) == [1, 2, 3, 4] and s.meta.ack_achieved == pb.ACK_SYNC
        cluster.wait_applied(4, s.meta.index)
        cluster.signal(4, signal.SIGSTOP)
        try:
            m = c.put("majority", "v")  # a learner never counts for commit
            assert 4 not in m.meta.confirmed_by and not m.meta.degraded
            with pytest.raises(SyncTimeoutError) as info:
                c.put("sync", "v", ack="sync", timeout_ms=500)
            assert info.value.confirmed_by == [1, 2, 3] and info.value.metadata["committed"] == "true"
            r = kv(cluster, "members", "update", "4", "--no-sync")
            assert r.returncode == 0 and f"4, {cluster.address(4)}, learner" in r.stdout
            assert "sync" not in r.stdout.split(f"4, {cluster.address(4)}, learner", 1)[1].split("\n", 1)[0]
            s2 = c.put("sync-without-4", "v", ack="sync", timeout_ms=5000)
            assert sorted(s2.meta.confirmed_by) == [1, 2, 3] and s2.meta.ack_achieved == pb.ACK_SYNC
        finally:
            cluster.signal(4, signal.SIGCONT)
