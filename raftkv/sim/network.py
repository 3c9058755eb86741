"""The simulated network: messages in flight with delivery times, and the faults that befall them."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from ..core import Message


@dataclass(slots=True)
class LinkFaults:
    drop: float = 0.0
    duplicate: float = 0.0
    max_delay: int = 3
    """Messages take 1..max_delay time units; a larger spread reorders them."""


@dataclass(order=True, slots=True)
class _InFlight:
    at: int
    seq: int
    msg: Message = field(compare=False)


class SimNetwork:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.faults = LinkFaults()
        self.blocked: set[tuple[int, int]] = set()
        self._q: list[_InFlight] = []
        self._seq = 0
        self.sent = 0
        self.dropped = 0

    def send(self, m: Message, now: int) -> None:
        self.sent += 1
        f = self.faults
        if (m.frm, m.to) in self.blocked or (f.drop and self.rng.random() < f.drop):
            self.dropped += 1
            return
        copies = 2 if f.duplicate and self.rng.random() < f.duplicate else 1
        for _ in range(copies):
            self._seq += 1
            heapq.heappush(self._q, _InFlight(now + self.rng.randint(1, f.max_delay), self._seq, m))

    def due(self, now: int) -> list[Message]:
        out = []
        q = self._q
        while q and q[0].at <= now:
            m = heapq.heappop(q).msg
            if (m.frm, m.to) in self.blocked:  # the link was cut while it was in flight
                self.dropped += 1
                continue
            out.append(m)
        return out

    def partition(self, groups: list[set[int]], one_way: bool = False) -> None:
        """Cut every link between different groups (only from earlier to later groups if one_way)."""
        self.blocked.clear()
        for i, a in enumerate(groups):
            for j, b in enumerate(groups):
                if i == j or (one_way and j < i):
                    continue
                for x in a:
                    for y in b:
                        self.blocked.add((x, y))

    def heal(self) -> None:
        self.blocked.clear()
        self.faults = LinkFaults()
