"""Watch with previous values on real `raftkv serve` processes, for values longer than a history row
copies in (storage/history.py): after snapshots, retention and kill -9, every node serves each event of
its history with the key's value before, including the oldest event, whose previous value comes from a
row below the floor that retention kept for it."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from raftkv.client import Client
from raftkv.client.watch import WatchCanceledError
from raftkv.storage.history import PREV_INLINE_BYTES

from .local_cluster import LocalCluster
from .test_watch import collect

HISTORY_REVISIONS = 12


def big(i: int) -> str:
    return f"{i:06d}" * (PREV_INLINE_BYTES // 6 + 100)


def floor_of(c: Client) -> int:
    """The oldest revision the node's history serves (a watch from revision 2 is refused naming it)."""
    with pytest.raises(WatchCanceledError) as e:
        next(iter(c.watch("hot", after_revision=1)))
    assert e.value.code == grpc.StatusCode.OUT_OF_RANGE
    return e.value.compact_revision


def test_previous_values_survive_retention_snapshots_and_kill_9(tmp_path: Path) -> None:
    flags = ["--snapshot-entries", "20", "--snapshot-keep-entries", "5",
             "--history-revisions", str(HISTORY_REVISIONS)]
    cluster = LocalCluster(tmp_path, extra=flags).start_all()
    try:
        written: list[tuple[int, str]] = []  # (revision, value) of every put of `hot`
        with cluster.client() as c:
            for i in range(40):
                written.append((c.put("hot", big(i)).meta.index, big(i)))
                c.put(f"filler{i % 3}", "v")
            last = c.put("last", "1").meta.index
        for i in cluster.procs:
            cluster.wait_applied(i, last)
        cluster.kill(3)  # kill -9: the rows kept below the floor must be durable
        cluster.start(3)
        cluster.wait_applied(3, last)
        value_before = {rev: written[n - 1][1] for n, (rev, _) in enumerate(written) if n > 0}
        for i in cluster.procs:
            with Client(cluster.address(i), timeout=10) as c:
                floor = floor_of(c)
                assert floor > written[0][0], f"node {i} trimmed nothing (floor {floor})"
                expect = [(rev, value) for rev, value in written if rev >= floor]
                assert expect, f"node {i}: floor {floor} is past every put of `hot`"
                evs = collect(c.watch("hot", after_revision=floor - 1, prev_kv=True), len(expect))
                assert [(e.kv.mod_revision, e.kv.value.decode()) for e in evs] == expect, f"node {i}"
                for e in evs:
                    assert e.prev_kv.value.decode() == value_before[e.kv.mod_revision], \
                        f"node {i}: the event at {e.kv.mod_revision} has the wrong previous value"
    finally:
        cluster.stop_all()
