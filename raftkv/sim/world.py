"""The simulated world the real host runs in: disks (a MemoryDisk each, behind a simulated I/O executor
with a slow fsync), a network between the nodes' inboxes, and nodes that crash and restart.

Every draw comes from one seeded generator, in the order the single-threaded simulated loop asks for
it, so a seed names a run exactly."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from ..core import Config, LogStorage, Message, MessageType, RaftNode
from ..server.config import ServerConfig
from ..server.host import NodeHost, bootstrap_store
from ..server.metrics import Metrics
from ..server.ports import Inbox
from ..storage.errors import CorruptionError
from ..storage.memory_store import MemoryDisk, MemoryNodeStore
from .loop import SimClock, SimLoop

log = structlog.get_logger("raftkv.sim")

CLUSTER_ID = b"raftkv-sim-cluster-id-0000000001"[:16]


@dataclass(slots=True)
class DiskFaults:
    fsync_ms: tuple[float, float] = (0.2, 1.0)
    """A synced transaction takes this long (uniform); a slow disk is a wide range."""
    slow_fsync: float = 0.0
    """Chance that one transaction takes 20-100x longer."""
    torn_write: float = 0.0
    """Chance that a crash during an append leaves part of it on the disk, uncommitted."""


class SimIO:
    """The host's I/O executor (server/ports.py) on a simulated disk: a transaction runs whole once its
    simulated fsync has finished; a crash before that loses it (or tears it, see DiskFaults)."""

    def __init__(self, rng: random.Random, faults: DiskFaults, disk: MemoryDisk) -> None:
        self.rng = rng
        self.faults = faults
        self.disk = disk
        self.dead = False
        self.in_flight: tuple[Callable[..., Any], tuple[Any, ...]] | None = None
        self.syncs = 0

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        lo, hi = self.faults.fsync_ms
        delay = self.rng.uniform(lo, hi) / 1000
        if self.faults.slow_fsync and self.rng.random() < self.faults.slow_fsync:
            delay *= self.rng.uniform(20, 100)
        self.in_flight = (fn, args)
        try:
            await asyncio.sleep(delay)
        finally:
            self.in_flight = None
        if self.dead:
            raise asyncio.CancelledError()
        self.syncs += 1
        return fn(*args)

    def crash(self) -> None:
        """The process dies: a transaction still in flight never reaches the disk, or part of it does."""
        self.dead = True
        if self.in_flight is None:
            return
        fn, args = self.in_flight
        entries = args[1] if getattr(fn, "__name__", "") == "_persist_timed" and len(args) > 1 else None
        if entries and self.faults.torn_write and self.rng.random() < self.faults.torn_write:
            self.disk.tear(entries, self.rng.randint(1, len(entries)))

    def shutdown(self) -> None:
        return None


@dataclass(slots=True)
class LinkFaults:
    drop: float = 0.0
    duplicate: float = 0.0
    delay_ms: tuple[float, float] = (0.1, 2.0)


class SimSpace:
    """The data directory's free space (server/ports.py's DiskRoom) on a simulated disk: room, until the
    nemesis fills it (`full`), which the NOSPACE alarm must ride out."""

    def __init__(self) -> None:
        self.full = False
        self.low = ""
        self.reserve = "(simulated reserve)"

    def create_reserve(self) -> bool:
        return not self.full

    def ensure_room(self, need: int) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")

    def restore(self) -> bool:
        return not self.full


class SimTransport:
    """A node's transport (server/ports.py's PeerTransport) over the simulated network."""

    def __init__(self, net: SimNetwork, node_id: int) -> None:
        self.net = net
        self.node_id = node_id
        self.inbox = Inbox()
        self._peers: dict[int, str] = {}

    def receive(self, m: Message) -> None:
        """A message off the simulated wire. An unknown sender is learned, as the gRPC transport learns
        one from its batch's `from_address` (a node started with --join answers the leader that way)."""
        if m.frm not in self._peers:
            self._peers[m.frm] = f"sim-{m.frm}:1"
        self.inbox.message(m)

    def send(self, msgs: list[Message]) -> None:
        for m in msgs:
            sent = m.to in self._peers and self.net.send(m)
            if m.type == MessageType.SNAP:
                # As the inline gRPC transport: handed to the stream (or not); the follower's answer
                # tells the leader the rest.
                self.inbox.snapshot_status(m.to, sent)

    def add_peer(self, node_id: int, address: str, peer_address: str = "") -> None:
        self._peers[node_id] = address

    def remove_peer(self, node_id: int) -> None:
        self._peers.pop(node_id, None)

    def peer_ids(self) -> list[int]:
        return list(self._peers)

    def snapshot_floor(self) -> int | None:
        return None


class SimNetwork:
    def __init__(self, loop: SimLoop, rng: random.Random) -> None:
        self.loop = loop
        self.rng = rng
        self.faults = LinkFaults()
        self.blocked: set[tuple[int, int]] = set()
        self.transports: dict[int, SimTransport] = {}
        self.sent = 0
        self.dropped = 0

    def send(self, m: Message) -> bool:
        self.sent += 1
        f = self.faults
        if (m.frm, m.to) in self.blocked or (f.drop and self.rng.random() < f.drop):
            self.dropped += 1
            return False
        copies = 2 if f.duplicate and self.rng.random() < f.duplicate else 1
        for _ in range(copies):
            # A copy, as the wire makes one: the sender's host and core keep their own.
            wire = dataclasses.replace(m, entries=list(m.entries))
            self.loop.call_later(self.rng.uniform(*f.delay_ms) / 1000, self._arrive, wire)
        return True

    def _arrive(self, m: Message) -> None:
        if (m.frm, m.to) in self.blocked:  # cut while in flight
            self.dropped += 1
            return
        transport = self.transports.get(m.to)
        if transport is not None:
            transport.receive(m)

    def partition(self, groups: list[set[int]], one_way: bool = False) -> None:
        self.blocked.clear()
        for i, a in enumerate(groups):
            for j, b in enumerate(groups):
                if i == j or (one_way and j < i):
                    continue
                self.blocked.update((x, y) for x in a for y in b)

    def heal(self) -> None:
        self.blocked.clear()
        self.faults = LinkFaults(delay_ms=self.faults.delay_ms)


RaftFactory = Callable[[Config, LogStorage], RaftNode]


@dataclass
class SimNode:
    """One node: its disk and its clock survive crashes, its store, host, transport and I/O do not."""

    id: int
    cfg: ServerConfig
    world: World
    clock: SimClock
    raft_factory: RaftFactory = RaftNode
    disk: MemoryDisk = field(init=False)
    host: NodeHost | None = None
    io: SimIO | None = None
    space: SimSpace = field(default_factory=SimSpace)
    restarts: int = 0
    corrupt: str = ""
    """Why this node refused to start (a flipped bit found), if it did: it stays down."""

    def __post_init__(self) -> None:
        self.disk = MemoryDisk(self.id, CLUSTER_ID)

    @property
    def up(self) -> bool:
        return self.host is not None

    @property
    def removed(self) -> bool:
        return self.host is not None and self.host.removal.removed

    async def start(self) -> bool:
        w = self.world
        try:
            store = MemoryNodeStore.reopen(self.disk, self.clock.monotonic)
        except CorruptionError as e:
            self.corrupt = str(e)
            w.log(f"node {self.id} refuses to start: {e}")
            return False
        bootstrap_store(store, self.cfg)
        transport = SimTransport(w.net, self.id)
        self.io = SimIO(w.rng, w.disk_faults, self.disk)
        self.host = NodeHost(self.cfg, store, transport, Metrics(self.id),
                             seed=w.seed * 1_000_003 + self.id * 1009 + self.restarts, clock=self.clock, io=self.io,
                             inbox=transport.inbox, space=self.space, raft_factory=self.raft_factory)
        self.host.tick_s = self.cfg.tick_ms / 1000 / self.clock.rate
        w.net.transports[self.id] = transport
        await self.host.start()
        return True

    def wipe(self) -> None:
        """An operator's answer to a removed member (removal.py's marker text): stop it, wipe its data
        directory, and start it again later with --join once it has been added back."""
        self.crash()
        self.disk = MemoryDisk(self.id, CLUSTER_ID)
        self.cfg = dataclasses.replace(self.cfg, join=True, peers={})
        self.corrupt = ""

    def crash(self) -> None:
        """kill -9: the loop stops where it is, memory is gone, the disk keeps what was synced."""
        host = self.host
        if host is None:
            return
        assert self.io is not None
        self.io.crash()
        self.world.net.transports.pop(self.id, None)
        host._stopping = True
        if host._tick_handle is not None:
            host._tick_handle.cancel()
        if host._flush_timer is not None:
            host._flush_timer.cancel()
        if host._loop_task is not None:
            host._loop_task.cancel()
        host._fail_everything(ConnectionError(f"node {self.id} crashed"))
        self.host = None
        self.restarts += 1


class World:
    def __init__(self, seed: int, loop: SimLoop, trace: Callable[[str], None]) -> None:
        self.seed = seed
        self.loop = loop
        self.rng = random.Random(seed)
        self.net = SimNetwork(loop, random.Random(self.rng.getrandbits(64)))
        self.disk_faults = DiskFaults()
        self.log = trace
