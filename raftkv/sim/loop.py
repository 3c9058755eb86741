"""An asyncio event loop on simulated time: the real host code (its `call_later` timers, `asyncio.sleep`,
`wait_for` deadlines) runs unchanged, and time jumps straight to the next timer when nothing is ready.
One thread, no I/O: given the same seed, the same callbacks run in the same order, so a run replays
exactly. `SimClock` is the host's clock (server/ports.py) on that time."""

from __future__ import annotations

import asyncio
import selectors
from typing import Any


class SimulationIdle(Exception):
    """Nothing is ready and no timer is set: the simulation can never make progress again."""


class _NoIOSelector(selectors.BaseSelector):
    """A selector that never waits: asked to wait `timeout`, it moves the clock on by that much."""

    def __init__(self, loop: SimLoop) -> None:
        self._loop = loop
        self._map: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._map[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self._map.pop(fd)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise SimulationIdle("no callback is ready and no timer is set")
        if timeout > 0:
            self._loop.advance(timeout)
        return []

    def get_map(self) -> Any:
        return self._map

    def close(self) -> None:
        self._map.clear()


class SimLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(_NoIOSelector(self))
        self._clock_resolution = 1e-9

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


class SimClock:
    """A node's monotonic clock on the simulated loop's time: `offset + rate * t`. A rate other than 1 is a
    clock running fast or slow (the host's tick timer is skewed with it, NodeHost.tick_s), which lease
    reads tolerate only within their drift margin."""

    def __init__(self, loop: SimLoop, offset_s: float = 0.0, rate: float = 1.0) -> None:
        self._loop = loop
        self._offset = offset_s
        self.rate = rate

    def monotonic(self) -> float:
        return self._offset + self.rate * self._loop.time()

    def monotonic_ns(self) -> int:
        return int(self.monotonic() * 1e9)
