"""A peer that sends a message type only the core itself may make (HUP, BEAT, SNAP_STATUS, UNREACHABLE)
gets it dropped and logged: the core's `step` refuses it (StepRejected), and the host's loop goes on
serving. Runs a real one-node host on a real LMDB store."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftkv.core import LOCAL_MESSAGES, Message
from raftkv.layers.acks import AckLevel, AckPolicy, AckRequest
from raftkv.server.config import ServerConfig
from raftkv.server.host import NodeHost, bootstrap_store
from raftkv.server.metrics import Metrics
from raftkv.storage import LmdbNodeStore, cluster_id_for
from raftkv.storage.commands import Put, encode
from raftkv.transport import Transport

PEERS = {1: "127.0.0.1:1"}  # never dialled: a one-node cluster has no peers to talk to


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LmdbNodeStore]:
    s = LmdbNodeStore(tmp_path, 1, cluster_id_for(PEERS), map_size=64 << 20)
    yield s
    s.close()


def test_local_message_types_from_a_peer_are_dropped_and_the_node_serves_on(store: LmdbNodeStore) -> None:
    async def main() -> None:
        cfg = ServerConfig(id=1, data_dir=str(store.path), peers=PEERS, tick_ms=10)
        bootstrap_store(store, cfg)
        transport = Transport(1, PEERS[1], lambda: store.cluster_id, on_message=lambda m: None,
                              on_unreachable=lambda nid: None, adopt_cluster_id=store.adopt_cluster_id)
        host = NodeHost(cfg, store, transport, Metrics(1), seed=1)
        await host.start()
        try:
            for _ in range(500):
                if host.is_leader:
                    break
                await asyncio.sleep(0.01)
            assert host.is_leader
            term = host.node.term
            for mtype in sorted(LOCAL_MESSAGES):
                host.deliver(Message(mtype, to=1, frm=2, term=term))
            out = await asyncio.wait_for(AckPolicy(host).write(encode(Put(b"k", b"v")), AckRequest(AckLevel.MAJORITY)), 10)
            assert out.index > 0
            assert not host.failed.is_set() and host.fatal is None
            assert host.is_leader and host.node.term == term
        finally:
            await host.stop()

    asyncio.run(main())
