"""The host answers a write as soon as its result is known, while the fsync that makes the apply visible
is still running (its entry is committed, so durable on a majority, already). These tests hold that fsync
open -- a real one-node host on a real LMDB store, its commit made to wait -- and check what a client can
observe meanwhile: the reply, and no read on the node that misses the write."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftkv.api.reads import prepare_read
from raftkv.layers.acks import AckLevel, AckRequest
from raftkv.layers.reads import ReadLevel
from raftkv.server.config import ServerConfig
from raftkv.server.host import NodeHost, bootstrap_store
from raftkv.server.metrics import Metrics
from raftkv.storage import LmdbNodeStore, cluster_id_for
from raftkv.storage.commands import Put, encode
from raftkv.storage.node_store import PreparedWrite
from raftkv.transport import Transport

PEERS = {1: "127.0.0.1:1"}  # never dialled: a one-node cluster has no peers to talk to


class HeldCommits:
    """Makes the store's prepared commits that apply key-value changes wait until released."""

    def __init__(self, store: LmdbNodeStore) -> None:
        self.release = threading.Event()
        self.held = threading.Event()
        original = store._write_prepared

        def write(w: PreparedWrite) -> None:
            if w.kv and not self.release.is_set():
                self.held.set()
                assert self.release.wait(30), "the test never released the commit"
            original(w)

        store._write_prepared = write  # type: ignore[method-assign]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LmdbNodeStore]:
    s = LmdbNodeStore(tmp_path, 1, cluster_id_for(PEERS), map_size=64 << 20)
    yield s
    s.close()


async def _leader(store: LmdbNodeStore) -> NodeHost:
    cfg = ServerConfig(id=1, data_dir=str(store.path), peers=PEERS, tick_ms=10)
    bootstrap_store(store, cfg)
    transport = Transport(1, PEERS[1], lambda: store.cluster_id, on_message=lambda m: None,
                          on_unreachable=lambda nid: None, adopt_cluster_id=store.adopt_cluster_id)
    host = NodeHost(cfg, store, transport, Metrics(1), seed=1)
    await host.start()
    for _ in range(500):
        if host.is_leader:
            return host
        await asyncio.sleep(0.01)
    raise AssertionError("a one-node cluster did not elect itself")


@pytest.mark.parametrize("level", [ReadLevel.SERIALIZABLE, ReadLevel.LINEARIZABLE])
def test_a_write_is_answered_during_its_fsync_and_reads_wait_for_it(store: LmdbNodeStore,
                                                                    level: ReadLevel) -> None:
    async def main() -> None:
        host = await _leader(store)
        held = HeldCommits(store)
        try:
            write = host.write(encode(Put(b"k", b"v")), AckRequest(AckLevel.MAJORITY))
            out = await asyncio.wait_for(write, 10)
            assert out.result.revision == out.index
            # The answer may come before the I/O thread reaches the commit; it gets there and is held.
            assert await asyncio.get_running_loop().run_in_executor(None, held.held.wait, 10)
            # Answered, and not yet visible: the commit that applies it is still held.
            assert store.get(b"k") is None and host.applied < out.index
            read = asyncio.ensure_future(prepare_read(host, level, None, b"", store.cluster_id))
            await asyncio.sleep(0.2)
            assert not read.done(), "a read on the node went ahead of a write the node had acknowledged"
            held.release.set()
            await asyncio.wait_for(read, 10)
            kv = store.get(b"k")
            assert kv is not None and kv.value == b"v" and kv.mod_revision == out.index
        finally:
            held.release.set()
            await host.stop()

    asyncio.run(main())
