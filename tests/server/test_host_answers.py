"""A write costs one synced commit, its log append (DESIGN.md §4): its committed entry is applied into the
store's write-back buffer, answered from there, and readable on the node at once; the buffer reaches LMDB
later, beside its applied index. These tests run a real one-node host on a real LMDB store and count the
commits a write costs, with the background flush held open to see what a client observes meanwhile."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftkv.api.reads import prepare_read
from raftkv.layers.acks import AckLevel, AckPolicy, AckRequest
from raftkv.layers.reads import ReadLevel
from raftkv.server.config import ServerConfig
from raftkv.server.host import NodeHost, bootstrap_store
from raftkv.server.metrics import Metrics
from raftkv.storage import LmdbNodeStore, cluster_id_for
from raftkv.storage.commands import Put, encode
from raftkv.transport import Transport

PEERS = {1: "127.0.0.1:1"}  # never dialled: a one-node cluster has no peers to talk to


class HeldFlushes:
    """Makes the store's background flushes wait until released."""

    def __init__(self, store: LmdbNodeStore) -> None:
        self.release = threading.Event()
        self.held = threading.Event()
        original = store.flush

        def flush() -> None:
            if not self.release.is_set():
                self.held.set()
                assert self.release.wait(30), "the test never released the flush"
            original()

        store.flush = flush  # type: ignore[method-assign]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LmdbNodeStore]:
    s = LmdbNodeStore(tmp_path, 1, cluster_id_for(PEERS), map_size=64 << 20)
    yield s
    s.close()


async def _leader(store: LmdbNodeStore, metrics: Metrics) -> NodeHost:
    cfg = ServerConfig(id=1, data_dir=str(store.path), peers=PEERS, tick_ms=10)
    bootstrap_store(store, cfg)
    transport = Transport(1, PEERS[1], lambda: store.cluster_id, on_message=lambda m: None,
                          on_unreachable=lambda nid: None, adopt_cluster_id=store.adopt_cluster_id)
    host = NodeHost(cfg, store, transport, metrics, seed=1)
    await host.start()
    for _ in range(1000):
        # The election's own commits and flush are done: nothing left to persist, LMDB holds it all. On a
        # loaded machine that takes longer than the settling time alone, and an election fsync counted
        # as the write's would fail the test.
        if (host.is_leader and host.applied >= store.log.last_index() and not host.node.has_ready()
                and not store.dirty() and store.hard_state().commit >= host.applied):
            await asyncio.sleep(0.3)  # and settled
            return host
        await asyncio.sleep(0.01)
    raise AssertionError("a one-node cluster did not elect itself and persist its election")


def _count(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(f"{name}_count") or 0.0


@pytest.mark.parametrize("level", [ReadLevel.SERIALIZABLE, ReadLevel.LINEARIZABLE])
def test_a_write_costs_one_fsync_and_is_read_from_the_buffer(store: LmdbNodeStore, level: ReadLevel) -> None:
    async def main() -> None:
        metrics = Metrics(1)
        host = await _leader(store, metrics)
        fsyncs = _count(metrics, "raftkv_fsync_duration_seconds")
        flushes = _count(metrics, "raftkv_backend_commit_duration_seconds")
        held = HeldFlushes(store)
        try:
            out = await asyncio.wait_for(AckPolicy(host).write(encode(Put(b"k", b"v")), AckRequest(AckLevel.MAJORITY)), 10)
            assert out.result.revision == out.index
            # Answered and readable on the node, while LMDB's kv does not have it yet.
            assert store.durable_applied_index() < out.index
            point = await asyncio.wait_for(prepare_read(host, level, None, b"", store.cluster_id), 10)
            assert point.level == level
            kv = store.get(b"k")
            assert kv is not None and kv.value == b"v" and kv.mod_revision == out.index
            # The write's one synced commit was its append; its apply is the background flush's.
            assert _count(metrics, "raftkv_fsync_duration_seconds") - fsyncs == 1
            assert await asyncio.get_running_loop().run_in_executor(None, held.held.wait, 10)
            held.release.set()
            for _ in range(500):
                if store.durable_applied_index() >= out.index:
                    break
                await asyncio.sleep(0.01)
            assert store.durable_applied_index() >= out.index
            assert _count(metrics, "raftkv_backend_commit_duration_seconds") - flushes == 1
            assert _count(metrics, "raftkv_fsync_duration_seconds") - fsyncs == 1
        finally:
            held.release.set()
            await host.stop()

    asyncio.run(main())
