"""A leader's appends leave before its own log sync, and its own copy counts only once that sync is done
(Raft thesis §10.2.1, DESIGN.md §4). A real host on a real LMDB store leads a 3-member cluster whose two
followers are played by a transport that answers as a follower's host would once it has persisted (it
holds no log: the leader only sees its answers). That the leader's own copy counts only once durable is
the core's rule (tests/core: leader_own_append_counts_once_durable.txt)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftkv.core import Message, MessageType, StateRole
from raftkv.layers.acks import AckLevel, AckPolicy, AckRequest
from raftkv.server.config import ServerConfig
from raftkv.server.host import NodeHost, bootstrap_store
from raftkv.server.metrics import Metrics
from raftkv.storage import LmdbNodeStore, cluster_id_for
from raftkv.storage.commands import Put, encode
from raftkv.transport.inbox import Inbox

PEERS = {1: "127.0.0.1:1", 2: "127.0.0.1:2", 3: "127.0.0.1:3"}
MT = MessageType


class AnsweringFollowers:
    """Followers 2 and 3: every vote granted, every append acknowledged (after `answer_appends` allows).
    Records each append handed over, with how many log syncs the leader had started by then."""

    def __init__(self, syncs_started: list[int]) -> None:
        self.inbox = Inbox()
        self.syncs_started = syncs_started
        self.appends: list[tuple[int, int, int]] = []  # (to, last index carried, leader syncs started then)
        self.answer_appends: set[int] = {2, 3}
        self.withheld: list[Message] = []

    def send(self, msgs: list[Message]) -> None:
        for m in msgs:
            reply = self._reply(m)
            if reply is None:
                continue
            if reply.type == MT.APP_RESP and m.frm != 0 and reply.frm not in self.answer_appends:
                self.withheld.append(reply)
                continue
            asyncio.get_running_loop().call_soon(self.inbox.message, reply)

    def release(self, node: int) -> None:
        self.answer_appends.add(node)
        for r in [r for r in self.withheld if r.frm == node]:
            self.withheld.remove(r)
            self.inbox.message(r)

    def _reply(self, m: Message) -> Message | None:
        if m.type in (MT.PRE_VOTE, MT.VOTE):
            resp = MT.PRE_VOTE_RESP if m.type == MT.PRE_VOTE else MT.VOTE_RESP
            return Message(resp, to=m.frm, frm=m.to, term=m.term)
        if m.type == MT.APP:
            last = m.index + len(m.entries)
            if m.entries:
                self.appends.append((m.to, last, self.syncs_started[0]))
            return Message(MT.APP_RESP, to=m.frm, frm=m.to, term=m.term, index=last)
        if m.type == MT.HEARTBEAT:
            return Message(MT.HEARTBEAT_RESP, to=m.frm, frm=m.to, term=m.term, context=m.context)
        return None

    def add_peer(self, node_id: int, address: str, peer_address: str = "") -> None: ...

    def remove_peer(self, node_id: int) -> None: ...

    def peer_ids(self) -> list[int]:
        return [2, 3]

    def snapshot_floor(self) -> int | None:
        return None


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LmdbNodeStore]:
    s = LmdbNodeStore(tmp_path, 1, cluster_id_for(PEERS), map_size=64 << 20)
    yield s
    s.close()


def test_a_lone_write_leaves_before_the_leaders_sync_and_one_follower_with_it_commits(store: LmdbNodeStore) -> None:
    syncs = [0]
    original = store.persist

    def persist(*args: object, **kw: object) -> None:
        syncs[0] += 1
        original(*args, **kw)  # type: ignore[arg-type]

    store.persist = persist  # type: ignore[method-assign]
    followers = AnsweringFollowers(syncs)

    async def main() -> None:
        cfg = ServerConfig(id=1, data_dir=str(store.path), peers=PEERS, tick_ms=10)
        bootstrap_store(store, cfg)
        host = NodeHost(cfg, store, followers, Metrics(1), seed=1)  # type: ignore[arg-type]
        await host.start()
        try:
            host.run_in_loop(host.node.campaign)
            for _ in range(2000):
                if host.node.role == StateRole.LEADER and host.applied >= store.log.last_index():
                    break
                await asyncio.sleep(0.01)
            assert host.node.role == StateRole.LEADER
            await asyncio.sleep(0.2)
            # A lone write: follower 3 never answers, follower 2 answers at once.
            followers.answer_appends = {2}
            followers.appends.clear()
            before = syncs[0]
            write = asyncio.ensure_future(AckPolicy(host).write(encode(Put(b"k", b"v")), AckRequest(AckLevel.MAJORITY)))
            for _ in range(2000):
                if {to for to, _, _ in followers.appends} == {2, 3}:
                    break
                await asyncio.sleep(0.005)
            index = max(last for _, last, _ in followers.appends)
            # Both appends were handed over before the leader had started the sync of its own copy.
            assert [(to, n) for to, last, n in followers.appends if last == index] == [(2, before), (3, before)]
            # Follower 2's answer and the leader's own synced copy are a quorum of 3 (follower 3 is silent).
            out = await asyncio.wait_for(write, 10)
            assert out.index == index and store.log.last_index() >= index
            assert host.node.raft_log.committed >= index
        finally:
            await host.stop()

    asyncio.run(main())
