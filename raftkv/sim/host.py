"""A simulated node host: the same Ready discipline as the real server, over a simulated disk.

The durable state is a MemoryStorage: a Ready's writes reach it only when its simulated fsync completes,
and only then are its persisted messages sent and its committed entries applied. A crash throws away the
Ready in flight (unsynced writes are lost) and rebuilds the node from what is durable."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ..core import Config, Entry, EntryType, MemoryStorage, RaftNode, Ready

NodeFactory = Callable[[Config, MemoryStorage], RaftNode]


@dataclass(slots=True)
class Applied:
    index: int
    term: int
    data: bytes


@dataclass
class SimHost:
    id: int
    storage: MemoryStorage
    factory: NodeFactory
    cfg_template: dict[str, object]
    seed: int
    node: RaftNode = field(init=False)
    applied: list[Applied] = field(default_factory=list)
    applied_index: int = 0
    in_flight: Ready | None = None
    done_at: int = 0
    up: bool = True
    restarts: int = 0

    def __post_init__(self) -> None:
        self._boot()

    def _boot(self) -> None:
        rng = random.Random(self.seed * 1_000_003 + self.id * 1009 + self.restarts)
        cfg = Config(id=self.id, rng=rng, applied=self.applied_index, **self.cfg_template)  # type: ignore[arg-type]
        self.node = self.factory(cfg, self.storage)

    def crash(self) -> None:
        self.in_flight = None
        self.up = False

    def restart(self) -> None:
        self.restarts += 1
        self.up = True
        self._boot()

    def take_ready(self, now: int, fsync_delay: int) -> Ready | None:
        if not self.up or self.in_flight is not None or not self.node.has_ready():
            return None
        rd = self.node.ready()
        self.in_flight = rd
        self.done_at = now + fsync_delay
        return rd

    def complete(self, on_apply: Callable[[int, Entry], None]) -> Ready:
        """The fsync finished: write durably, apply, advance. Returns the Ready (for persisted messages)."""
        rd = self.in_flight
        assert rd is not None
        st = self.storage
        if rd.snapshot is not None:
            st.apply_snapshot(rd.snapshot)
            self.applied_index = rd.snapshot.meta.index
        st.append(rd.entries)
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)
        for e in rd.committed_entries:
            if e.index <= self.applied_index:
                continue
            self.applied_index = e.index
            if e.type == EntryType.NORMAL and e.data:
                self.applied.append(Applied(e.index, e.term, e.data))
            on_apply(self.id, e)
        self.in_flight = None
        self.node.advance(rd)
        return rd
