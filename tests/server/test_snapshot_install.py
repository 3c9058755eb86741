"""A follower host installing a streamed snapshot, on a real LMDB store: the test plays the leader (its
heartbeats and its snapshot message, staged from a real leader store). The host answers "installed" only
once the Ready that installs it is written, "not needed" for a snapshot it already holds, and a long install does not make the follower start an election while the leader's
heartbeats wait in its inbox."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from raftkv.core import ConfState, Entry, HardState, Message, MessageType, Snapshot, StateRole
from raftkv.server.config import ServerConfig
from raftkv.server.host import NodeHost, bootstrap_store
from raftkv.server.metrics import Metrics
from raftkv.storage import LmdbNodeStore, cluster_id_for
from raftkv.storage.commands import Put, encode
from raftkv.transport import Transport

PEERS = {1: "127.0.0.1:9", 2: "127.0.0.1:10", 3: "127.0.0.1:11"}  # nothing listens: sends just fail
CID = cluster_id_for(PEERS)
CONF = ConfState(frozenset(PEERS))
INSTALL_S = 0.6  # 60 ticks of 10 ms: several election timeouts


def leader_store(path: Path) -> LmdbNodeStore:
    s = LmdbNodeStore(path, 1, CID, map_size=64 << 20)
    bootstrap_store(s, ServerConfig(id=1, data_dir=str(path), peers=PEERS))
    ents = [Entry(2, 4 + i, data=encode(Put(b"k%04d" % i, b"v" * 100))) for i in range(300)]
    s.save_and_apply(HardState(2, 1, 303), ents, None, [Entry(1, i) for i in (1, 2, 3)] + ents, CONF, None)
    s.compact(300, CONF)
    return s


def staged_snapshot(src: LmdbNodeStore, dst: LmdbNodeStore) -> Snapshot:
    reader = src.open_snapshot_reader(4096)
    stage = dst.stage_snapshot(reader.meta)
    while (p := reader.next_piece()) is not None:
        stage.add(p.data, p.crc)
    snap = Snapshot(reader.meta, stage.finish(reader.count, reader.digest()))
    reader.close()
    return snap


def test_a_long_install_is_answered_truthfully_and_starts_no_election(tmp_path: Path) -> None:
    src = leader_store(tmp_path / "leader")
    store = LmdbNodeStore(tmp_path / "follower", 2, CID, map_size=64 << 20)
    cfg = ServerConfig(id=2, data_dir=str(store.path), peers=PEERS, tick_ms=10, election_ticks=10, heartbeat_ticks=1)
    bootstrap_store(store, cfg)
    original = store.save_and_apply

    def slow_install(*args: object) -> list[object]:
        if args[2] is not None:  # the Ready's snapshot: a big one takes a while
            time.sleep(INSTALL_S)
        return original(*args)  # type: ignore[arg-type]

    store.save_and_apply = slow_install  # type: ignore[method-assign]
    sent: list[Message] = []

    async def main() -> None:
        transport = Transport(2, PEERS[2], lambda: CID, on_message=lambda m: None, on_unreachable=lambda _: None,
                              adopt_cluster_id=lambda _: None)
        transport.send = sent.extend  # type: ignore[method-assign]
        host = NodeHost(cfg, store, transport, Metrics(2), seed=5)
        await host.start()
        beating = True

        async def leader_heartbeats() -> None:
            while beating:  # node 1, leader of term 2, as a real leader would: every tick
                host.deliver(Message(MessageType.HEARTBEAT, to=2, frm=1, term=2, commit=0))
                await asyncio.sleep(0.01)

        beats = asyncio.create_task(leader_heartbeats())
        try:
            for _ in range(200):
                if host.leader_id == 1:
                    break
                await asyncio.sleep(0.01)
            assert host.leader_id == 1 and host.node.role == StateRole.FOLLOWER
            snap = staged_snapshot(src, store)
            installed = host.deliver_snapshot(Message(MessageType.SNAP, to=2, frm=1, term=2, snapshot=snap))
            assert await asyncio.wait_for(installed, 10) is True
            await asyncio.sleep(0.2)
            assert host.applied == snap.meta.index and store.get(b"k0299") is not None
            assert host.node.role == StateRole.FOLLOWER and host.leader_id == 1 and host.node.term == 2
            votes = [m for m in sent if m.type in (MessageType.PRE_VOTE, MessageType.VOTE)]
            assert votes == [], "the follower campaigned after installing its leader's snapshot"
            # The same snapshot again: nothing to install, and the host says so (the transport then
            # drops the staged file).
            again = staged_snapshot(src, store)
            assert await asyncio.wait_for(host.deliver_snapshot(
                Message(MessageType.SNAP, to=2, frm=1, term=2, snapshot=again)), 10) is False
            assert store.applied_index() == snap.meta.index
        finally:
            beating = False
            await beats
            await host.stop()
            await transport.stop()

    try:
        asyncio.run(main())
    finally:
        store.close()
        src.close()
