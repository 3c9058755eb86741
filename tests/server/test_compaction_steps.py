"""A node host compacting a large log and history on a real LMDB store: the compaction runs as short jobs
on the host's one I/O thread, so a Ready's transaction queued meanwhile waits for one step, not for the
whole compaction (after a million-key load, one compaction transaction held every node's Raft loop for
0.6 s and cost an election)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from raftkv.core import ConfState, Entry, HardState
from raftkv.server.config import ServerConfig
from raftkv.server.host import NodeHost, bootstrap_store
from raftkv.server.metrics import Metrics
from raftkv.storage import LmdbNodeStore, cluster_id_for
from raftkv.storage.commands import Put, Txn, encode
from raftkv.storage.history import Retention
from raftkv.transport import Transport

PEERS = {1: "127.0.0.1:9", 2: "127.0.0.1:10", 3: "127.0.0.1:11"}  # nothing listens: sends just fail
CID = cluster_id_for(PEERS)
CONF = ConfState(frozenset(PEERS))
TXNS, PUTS = 30, 1000  # 30,000 history rows: three steps' worth


def test_a_compaction_lets_io_jobs_in_between_its_steps(tmp_path: Path) -> None:
    store = LmdbNodeStore(tmp_path, 2, CID, map_size=512 << 20)
    cfg = ServerConfig(id=2, data_dir=str(store.path), peers=PEERS, tick_ms=10, election_ticks=10, heartbeat_ticks=1)
    bootstrap_store(store, cfg)
    ents = [Entry(2, 4 + t, data=encode(Txn((), tuple(Put(b"k%02d-%04d" % (t, i), b"v") for i in range(PUTS)), ())))
            for t in range(TXNS)]
    last = 3 + TXNS
    store.save_and_apply(HardState(2, 1, last), ents, None, [Entry(1, i) for i in (1, 2, 3)] + ents, CONF, None)
    store.history_retention = Retention(revisions=2, seconds=3600)
    jobs: list[str] = []

    def recorded(name: str, fn: Any) -> Any:
        def run(*args: Any) -> Any:
            jobs.append(name)
            return fn(*args)
        return run

    for name in ("compact", "start_compaction", "compaction_step"):
        if hasattr(store, name):
            setattr(store, name, recorded(name, getattr(store, name)))

    async def main() -> None:
        transport = Transport(2, PEERS[2], lambda: CID, on_message=lambda m: None, on_unreachable=lambda _: None,
                              adopt_cluster_id=lambda _: None)
        transport.send = lambda msgs: None  # type: ignore[method-assign]
        host = NodeHost(cfg, store, transport, Metrics(2), seed=5)
        await host.start()
        try:
            compaction = host.compactor.compaction()
            await asyncio.sleep(0)  # the compaction's first job is queued
            await host.io.run(lambda: jobs.append("other"))  # a Ready's transaction, say
            assert await asyncio.wait_for(compaction, 30) == last
        finally:
            await host.stop()
            await transport.stop()

    try:
        asyncio.run(main())
        assert "other" in jobs and jobs.index("other") < len(jobs) - 1, \
            f"the other job waited for the whole compaction: {jobs}"
        assert jobs.count("compaction_step") >= 3
        assert store.history_floor() == last - 1
        with store.env.begin(db=store.history_db) as txn:
            assert txn.stat(store.history_db)["entries"] == 2 * PUTS
    finally:
        store.close()
