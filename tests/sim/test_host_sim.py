"""The host simulator (raftkv/sim/host_run.py): the real NodeHost and layers over simulated time,
network and disks, with client histories checked after each run. These tests show that it runs many
seeds clean, replays a seed exactly, and catches real bugs in the host and the layers (each mutant below
is a bug the ack or read path could have), and that the in-memory store's faults behave as a disk's."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import structlog

from raftkv.core import ConfState, Entry, HardState, Message, MessageType
from raftkv.layers import acks
from raftkv.server.config import ServerConfig
from raftkv.server.host import NodeHost
from raftkv.sim.host_run import HostSimOptions, run_host_seed, run_host_seeds
from raftkv.sim.loop import SimClock, SimLoop
from raftkv.sim.world import SimNode, World
from raftkv.storage.commands import Put, encode
from raftkv.storage.errors import CorruptionError
from raftkv.storage.memory_store import MemoryDisk, MemoryNodeStore
from raftkv.transport.envelope import StampedMessage

SEEDS = range(1, 101)


def test_a_few_hundred_seeds_keep_every_guarantee() -> None:
    summary = run_host_seeds(SEEDS)
    bad = [(r.seed, str(r.violation), r.replay_command()) for r in summary.failures]
    assert bad == []
    assert summary.acked_writes > 10 * summary.seeds and summary.reads > 10 * summary.seeds
    assert summary.crashes > summary.seeds  # faults did happen


def test_a_seed_replays_exactly() -> None:
    a, b = run_host_seed(4), run_host_seed(4)
    assert (a.ops, a.acked_writes, a.reads, a.trace) == (b.ops, b.acked_writes, b.reads, b.trace)
    assert run_host_seed(5).trace != a.trace


def _first_violation(monkeypatch: pytest.MonkeyPatch, seeds: range) -> tuple[int, str, list[str]] | None:
    for seed in seeds:
        r = run_host_seed(seed)
        if r.violation is not None:
            return seed, r.violation.invariant, r.shrunk
    return None


def test_catches_linearizable_reads_served_without_a_read_index(monkeypatch: pytest.MonkeyPatch) -> None:
    async def local_barrier(self: NodeHost) -> int:  # the bug: no quorum round, a deposed leader answers
        return self.applied

    monkeypatch.setattr(NodeHost, "linearizable_barrier", local_barrier)
    found = _first_violation(monkeypatch, range(1, 101))
    assert found is not None, "a stale linearizable read went unnoticed"
    _, invariant, shrunk = found
    assert invariant.startswith("linearizable") and any(line.startswith(">>") for line in shrunk)


def test_catches_majority_writes_acknowledged_before_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    async def early(self: acks.AckPolicy, data: bytes, ack: acks.AckRequest, needs_result: bool = True
                    ) -> acks.WriteOutcome:  # the bug: answered once the leader's own fsync is done
        self.host.admit_write()
        index, term, _ = await self.host.propose([data], results=False)
        await self.host.wait_persisted(index, term)
        return acks.WriteOutcome(index, term, None, acks.AckOutcome(ack.level, False, []), 0.0)

    monkeypatch.setattr(acks.AckPolicy, "write", early)
    assert _first_violation(monkeypatch, range(1, 101)) is not None, "a write acknowledged early went unnoticed"


def test_a_flipped_bit_on_a_stopped_node_is_found_when_it_starts() -> None:
    flipped = 0
    for seed in range(1, 41):
        r = run_host_seed(seed, HostSimOptions(nodes=3, faults=("flip-bit",)))
        assert r.violation is None, (seed, str(r.violation))
        if any("flip a bit" in line for line in r.trace):
            flipped += 1
            assert any("refuses to start" in line for line in r.trace)
    assert flipped > 0


# -- the in-memory store's disk --------------------------------------------------------------------------

def _store(disk: MemoryDisk) -> MemoryNodeStore:
    return MemoryNodeStore(disk, lambda: 0.0)


def test_memory_store_crash_keeps_only_what_was_synced() -> None:
    disk = MemoryDisk(1, b"c" * 16)
    s = _store(disk)
    s.bootstrap(ConfState(frozenset({1})), {})
    last = s.last_index()
    e = Entry(1, last + 1, data=encode(Put(b"k", b"v")))
    s.persist(HardState(1, 1, last + 1), [e], None, None)
    s.apply([e], None)
    assert s.get(b"k") is not None and disk.applied < e.index  # applied into the buffer only
    again = MemoryNodeStore.reopen(disk, lambda: 0.0)  # a crash: the buffer is gone, the log is not
    assert again.get(b"k") is None and again.last_index() == e.index and again.applied_index() == disk.applied


def test_memory_store_drops_a_torn_append_and_reports_a_flipped_bit() -> None:
    disk = MemoryDisk(1, b"c" * 16)
    s = _store(disk)
    s.bootstrap(ConfState(frozenset({1})), {})
    last = s.last_index()
    torn = [Entry(1, last + i, data=b"x" * 10) for i in (1, 2, 3)]
    disk.tear(torn, 2)
    reopened = MemoryNodeStore.reopen(disk, lambda: 0.0)
    assert reopened.last_index() == last  # the torn transaction never committed
    assert disk.flip_bit(last, 3)
    with pytest.raises(CorruptionError, match=f"log entry {last}"):
        MemoryNodeStore.reopen(disk, lambda: 0.0)


# -- host behaviour found by the simulator ---------------------------------------------------------------

def _small_cluster(size: int, main: Callable[[World, list[SimNode]], Awaitable[None]], **settings: object) -> None:
    """Run `main` over `size` real hosts on the simulated world (no clients, no faults but main's own);
    `settings`: ServerConfig fields beyond the defaults below."""
    loop = SimLoop()
    world = World(7, loop, lambda line: None)
    peers = {i: f"sim-{i}:1" for i in range(1, size + 1)}
    base: dict[str, object] = {"tick_ms": 10, "election_ticks": 10} | settings
    nodes = [SimNode(i, ServerConfig(id=i, data_dir=f"/nonexistent/{i}", peers=peers, **base),  # type: ignore[arg-type]
                     world, SimClock(loop)) for i in peers]

    async def run() -> None:
        for n in nodes:
            await n.start()
        try:
            await main(world, nodes)
        finally:
            for n in nodes:
                n.crash()

    old = structlog.get_config()
    structlog.configure(processors=[_drop])
    try:
        loop.run_until_complete(run())
    finally:
        structlog.configure(**old)
        for t in asyncio.all_tasks(loop):
            t.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


def _drop(*args: object) -> dict[str, object]:
    raise structlog.DropEvent


async def _leader(nodes: list[SimNode]) -> SimNode:
    while True:
        await asyncio.sleep(0.01)
        for n in nodes:
            if n.host is not None and n.host.is_leader:
                return n


def test_a_deposed_leaders_durability_wait_ends_at_its_deadline() -> None:
    """A semi-sync or sync write's durability wait on a leader that loses its leadership is answered (timed
    out) at its deadline: the loop wakes for that deadline, so it must settle the wait then rather than
    wake again every millisecond for as long as it follows."""
    async def main(world: World, nodes: list[SimNode]) -> None:
        leader = await _leader(nodes)
        host = leader.host
        assert host is not None
        everyone = frozenset(n.id for n in nodes)
        fut = host.wait_durable(host.last_index() + 1000, everyone, 3, 1.0)
        world.net.partition([{leader.id}, set(everyone) - {leader.id}])
        await asyncio.sleep(0.5)
        assert not host.is_leader
        rounds = 0
        after_round = host._after_round

        def counted() -> None:
            nonlocal rounds
            rounds += 1
            after_round()

        host._after_round = counted  # type: ignore[method-assign]
        await asyncio.sleep(1.5)
        assert fut.done() and fut.result().timed_out
        assert rounds < 500, f"{rounds} loop rounds in 1.5 s of following (ticks: 150)"

    _small_cluster(3, main)


def test_follower_freshness_comes_from_confirmed_rounds_only() -> None:
    """Bounded staleness's proof, carried in the messages' envelopes: a follower's freshness is a stamp it
    sent itself, echoed with the leader's commit index once a quorum-confirmed round vouched for it; cut off
    with its leader in a minority, it keeps sending newer stamps, but no round is confirmed, so none is
    vouched for -- while the majority may already be committing writes it does not have."""
    sent: dict[int, list[int]] = {}

    async def main(world: World, nodes: list[SimNode]) -> None:
        net_send = world.net.send

        def send(m: Message) -> bool:
            if isinstance(m, StampedMessage) and m.type in (MessageType.APP_RESP, MessageType.HEARTBEAT_RESP):
                sent.setdefault(m.frm, []).append(m.stamp)
            return net_send(m)

        world.net.send = send  # type: ignore[method-assign]
        leader = await _leader(nodes)
        await asyncio.sleep(0.1)
        follower = next(n for n in nodes if n is not leader)
        assert leader.host is not None and follower.host is not None
        fresh = follower.host.stamps.freshness
        assert fresh is not None
        stamp, commit = fresh
        assert commit == leader.host.node.raft_log.committed
        assert stamp in sent[follower.id]  # a stamp the follower itself sent
        vouched = leader.host.stamps.echo_for(follower.id)  # confirmed before the cut; on its way
        assert vouched is not None
        world.net.partition([{leader.id, follower.id}, {n.id for n in nodes} - {leader.id, follower.id}])
        await asyncio.sleep(0.06)  # fewer ticks than CheckQuorum waits before deposing the leader
        assert leader.host.is_leader
        assert max(sent[follower.id]) > vouched[0]
        assert follower.host.stamps.freshness == vouched

    _small_cluster(5, main)


@pytest.mark.parametrize("delay_ms", [0.0, 20.0])
def test_followers_learn_of_a_commit_after_the_commit_notice_delay_not_the_next_heartbeat(delay_ms: float) -> None:
    """A lone write's commit reaches the followers with the leader's commit notice: at once with
    `commit_notice_delay_ms` 0, else that long after the commit (no later append comes to carry it) --
    never only with the next heartbeat, which here is a second away."""
    learned: dict[int, float] = {}

    async def main(world: World, nodes: list[SimNode]) -> None:
        leader = await _leader(nodes)
        host = leader.host
        assert host is not None
        await asyncio.sleep(2.5)  # past the first heartbeats: followers know the term's first commit
        loop = asyncio.get_running_loop()
        index, _, futs = await host.propose([encode(Put(b"k", b"v"))])
        assert futs is not None
        await futs[0]
        committed_at = loop.time()
        followers = [n for n in nodes if n is not leader]
        while len(learned) < len(followers) and loop.time() - committed_at < 2.0:
            for n in followers:
                assert n.host is not None
                if n.id not in learned and n.host.node.raft_log.committed >= index:
                    learned[n.id] = loop.time() - committed_at
            await asyncio.sleep(0.0005)

    _small_cluster(3, main, tick_ms=100, heartbeat_ticks=10, election_ticks=30, commit_notice_delay_ms=delay_ms)
    assert len(learned) == 2, learned
    delay = delay_ms / 1000
    for nid, after in learned.items():
        assert delay - 0.001 <= after <= delay + 0.01, f"node {nid} learned of the commit {after * 1000:.1f} ms after it"
