"""kill -9 of every node at random moments under write load (DESIGN.md §4: a write costs one synced commit,
its log append; applies live in a write-back buffer that a crash loses and the restart re-applies).

Writers run throughout, on real `raftkv serve` processes, each write a Txn (never retried by the client,
so an error means "outcome unknown", never "applied twice by a retry"):

- a put of a key of its own: if acknowledged, it must be there with its value; present or not, its
  version is 1 (a second application of the same entry would make it 2);
- a compare-and-set increment of one counter, which also puts a marker key of its own: the counter's
  value equals the increments acknowledged plus those whose outcome was unknown and whose marker is
  there (the marker and the increment are one command), and its version is one more than its value
  (its first put, then one per increment).

Each round kills every node with SIGKILL at random moments, opens each node's LMDB offline as the kill
left it (no data beyond the applied index stored beside it, no entry above it compacted away), then
starts them again. At the end each node's own data (read from that node alone) must be the same, so no
node lost or doubled an entry that the others applied once.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from raftkv.client import Client
from raftkv.client.requests import compare, op_put
from raftkv.storage import LmdbNodeStore
from raftkv.storage.commands import Range

from .local_cluster import LocalCluster

SNAPSHOTS = ["--snapshot-entries", "40", "--snapshot-keep-entries", "0"]
"""Compaction as close behind the applied index as it may go: through the applied index LMDB holds."""


@dataclass
class Outcomes:
    acked: dict[str, str] = field(default_factory=dict)  # own key -> value
    unknown: set[str] = field(default_factory=set)
    increments: list[str] = field(default_factory=list)  # markers of acknowledged increments
    unsure_increments: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _writer(c: LocalCluster, tid: int, stop: threading.Event, out: Outcomes) -> None:
    seq = 0
    with Client(c.endpoints, timeout=3.0) as cl:
        while not stop.is_set():
            seq += 1
            key, value = f"own-{tid}-{seq:05d}", f"v{tid}.{seq}"
            try:
                cl.txn([], [op_put(key, value)])
                with out.lock:
                    out.acked[key] = value
            except Exception:  # noqa: BLE001 - any failure leaves the outcome unknown
                with out.lock:
                    out.unknown.add(key)
                time.sleep(0.05)
            marker = f"inc-{tid}-{seq:05d}"
            try:
                got = cl.get("counter", consistency="linearizable")
                n = int(got.kv.value)
            except Exception:  # noqa: BLE001 - any failure leaves the outcome unknown
                time.sleep(0.05)
                continue
            try:
                r = cl.txn([compare("counter", "value", "=", str(n))],
                           [op_put("counter", str(n + 1)), op_put(marker, str(n + 1))])
                if r.succeeded:
                    with out.lock:
                        out.increments.append(marker)
            except Exception:  # noqa: BLE001 - any failure leaves the outcome unknown
                with out.lock:
                    out.unsure_increments.add(marker)
                time.sleep(0.05)


def _node_data(c: LocalCluster, i: int) -> dict[bytes, tuple[bytes, int, int, int]]:
    with Client(c.address(i), timeout=10.0) as cl:
        r = cl.range(b"\0", b"\0", consistency="serializable", endpoint=c.address(i))
    return {kv.key: (kv.value, kv.version, kv.create_revision, kv.mod_revision) for kv in r.kvs}


def _wait_converged(c: LocalCluster, timeout: float = 30.0) -> int:
    leader = c.wait_leader(timeout=timeout)
    with Client(c.endpoints, timeout=10.0) as cl:
        index = cl.put("converged", "1").meta.index
    for i in sorted(c.ports):
        c.wait_applied(i, index, timeout=timeout)
    return leader


def _check_offline(c: LocalCluster) -> None:
    """Each node's LMDB as kill -9 left it, before any replay: no data beyond its applied index."""
    for i in sorted(c.ports):
        s = LmdbNodeStore(c.root / f"node{i}", i, map_size=4 << 30)
        try:
            applied = s.applied_index()
            assert applied == s.durable_applied_index()
            kvs = s.range(Range(b"\0", b"\0")).kvs
            newest = max((kv.mod_revision for kv in kvs), default=0)
            assert newest <= applied, f"node {i}: data at revision {newest} beyond its applied index {applied}"
            assert s.first_index() - 1 <= applied, f"node {i}: entries above its applied index compacted away"
        finally:
            s.close()


def _run(tmp_path: Path, rounds: int, extra: list[str], seed: int) -> None:
    rng = random.Random(seed)
    c = LocalCluster(tmp_path, extra=extra).start_all()
    with c.client() as cl:
        cl.put("counter", "0")
    out = Outcomes()
    stop = threading.Event()
    writers = [threading.Thread(target=_writer, args=(c, t, stop, out), daemon=True) for t in range(3)]
    try:
        for w in writers:
            w.start()
        for _ in range(rounds):
            time.sleep(rng.uniform(0.6, 1.8))  # under load
            for i in rng.sample(sorted(c.ports), len(c.ports)):
                c.kill(i)
                time.sleep(rng.uniform(0.0, 0.15))
            _check_offline(c)
            for i in sorted(c.ports):
                c.start(i)
            c.wait_leader(timeout=30)
        time.sleep(1.0)
        stop.set()
        for w in writers:
            w.join(30)
        _wait_converged(c)
        for i in sorted(c.ports):  # the last crash leaves the buffers unflushed
            c.kill(i)
        _check_offline(c)
        for i in sorted(c.ports):
            c.start(i)
        _wait_converged(c)
        data = {i: _node_data(c, i) for i in sorted(c.ports)}
    finally:
        stop.set()
        c.stop_all()

    assert len(out.acked) > 20 and len(out.increments) > 10, "too little load got through to test anything"
    first = data[min(data)]
    for i, d in data.items():
        assert d == first, f"node {i}'s data differs from node {min(data)}'s"
    own = {k.decode(): v for k, v in first.items() if k.startswith(b"own-")}
    for key, value in out.acked.items():
        assert key in own, f"acknowledged write {key} lost"
        assert own[key][0] == value.encode()
    for key, (_, version, create, mod) in own.items():
        assert key in out.acked or key in out.unknown
        assert version == 1 and create == mod, f"{key} applied more than once (version {version})"
    markers = {k.decode() for k in first if k.startswith(b"inc-")}
    missing = set(out.increments) - markers
    assert not missing, f"acknowledged increments lost: {sorted(missing)[:5]}"
    assert markers <= set(out.increments) | out.unsure_increments
    counter = first.get(b"counter")
    assert counter is not None
    value, version = int(counter[0]), counter[1]
    resolved = len(markers & out.unsure_increments)
    assert value == len(out.increments) + resolved == len(markers), (value, len(out.increments), resolved)
    assert version == value + 1, f"counter version {version} for {value} increments: an increment applied twice"


@pytest.mark.parametrize(("extra", "seed"), [(SNAPSHOTS, 13), ([], 14)], ids=["snapshots", "log"])
def test_kill_9_of_every_node_under_load_loses_and_doubles_nothing(tmp_path: Path, extra: list[str],
                                                                  seed: int) -> None:
    """Three rounds in each configuration; the many-round soak below is `make test-long`."""
    _run(tmp_path, rounds=3, extra=extra, seed=seed)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], SNAPSHOTS], ids=["log", "snapshots"])
def test_kill_9_of_every_node_many_rounds(tmp_path: Path, extra: list[str]) -> None:
    _run(tmp_path, rounds=8, extra=extra, seed=len(extra) + 1)
