"""Watches and leases across snapshots, and slow watchers, on real `raftkv serve` processes: a node that
installs a snapshot has the lease table from it (a later revoke deletes the keys there too) and history
only after it (OUT_OF_RANGE naming the oldest revision); a watch it was serving moves to another node
without losing or repeating an event."""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from raftkv.client import Client
from raftkv.client.watch import WatchCanceledError
from raftkv.proto.stubs import watch_pb2 as wpb

from .local_cluster import LocalCluster
from .test_watch import pump, revisions_seen

FLAGS = ["--snapshot-entries", "100", "--snapshot-keep-entries", "10"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(Path(tmp_path_factory.mktemp("wsnap")), extra=FLAGS).start_all()
    try:
        yield c
    finally:
        c.stop_all()


@pytest.mark.slow
def test_snapshot_carries_leases_and_starts_the_history(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    lagger = next(i for i in sorted(cluster.procs) if i != leader)
    with Client(cluster.address(leader), timeout=10) as c:  # never through the node that will be paused
        lease = c.lease_grant(300).id
        c.put("snap/leased", "v", lease=lease)
        begin = c.put("snap/watched", "0").meta.index
        # A watch served by the lagging node, which is then paused while the leader compacts past it.
        others = [cluster.address(i) for i in sorted(cluster.procs) if i != lagger]
        with Client(",".join([cluster.address(lagger), *others]), timeout=10) as wc:
            got: queue.Queue[wpb.WatchResponse] = queue.Queue()
            it = wc.watch("snap/watched", after_revision=begin, progress_interval_ms=300)
            threading.Thread(target=pump, args=(it, got), daemon=True).start()
            written = [c.put("snap/watched", "1").meta.index]
            time.sleep(0.5)
            cluster.signal(lagger, signal.SIGSTOP)
            try:
                for i in range(450):  # more appends than the leader keeps in flight to one follower (256)
                    rev = c.put("snap/watched" if i % 50 == 0 else f"snap/fill{i}", str(i)).meta.index
                    if i % 50 == 0:
                        written.append(rev)
            finally:
                cluster.signal(lagger, signal.SIGCONT)
            last = c.put("snap/watched", "end").meta.index
            written.append(last)
            cluster.wait_applied(lagger, last)
            seen, servers = revisions_seen(got, len(written))
            assert seen == written
        assert "installed snapshot" in cluster.log_text(lagger)
        assert len(servers) >= 2  # the lagging node could not go on after its snapshot: another took over
        # Its history starts after the snapshot: an old revision is OUT_OF_RANGE there, naming the oldest.
        with Client(cluster.address(lagger), timeout=10) as lc:
            with pytest.raises(WatchCanceledError) as e:
                next(iter(lc.watch("snap/watched", after_revision=begin)))
            assert e.value.code == grpc.StatusCode.OUT_OF_RANGE and e.value.compact_revision > begin
            # Its lease table came with the snapshot: the revoke deletes the key there too.
            assert lc.get("snap/leased", consistency="serializable").found
            c.lease_revoke(lease)
            deadline = time.monotonic() + 20
            while lc.get("snap/leased", consistency="serializable").found and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not lc.get("snap/leased", consistency="serializable").found
