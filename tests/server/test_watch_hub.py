"""The watch hub over an in-memory history: catch-up in small batches while applies keep coming, then
live, delivers every matching event once and in order; a slow consumer is cut off; a snapshot ends the
watches it would make miss events; a compacted start is refused naming the oldest revision."""

from __future__ import annotations

import asyncio
import random

import pytest

from raftkv.server.watch_hub import PUT, Event, WatchHub
from raftkv.storage.errors import HistoryOutOfRange


class FakeStore:
    """What the hub reads of a store: history rows appended by `apply`, which then calls the sink."""

    def __init__(self) -> None:
        self.event_sink = None
        self.events: list[Event] = []
        self.applied = 0
        self.floor = 1

    def applied_index(self) -> int:
        return self.applied

    def history_floor(self) -> int:
        return self.floor

    def history_events(self, start: int, end: int, limit: int = 1000) -> list[Event]:
        if start < self.floor:
            raise HistoryOutOfRange(start, self.floor)
        out = [e for e in self.events if start <= e.revision <= end]
        return out[:limit]

    def apply(self, keys: list[bytes]) -> None:
        self.applied += 1
        made = [Event(self.applied, PUT, k, None, None) for k in keys]
        self.events += made
        if self.event_sink is not None:
            self.event_sink(made, self.applied)


@pytest.mark.asyncio
async def test_catch_up_then_live_every_event_once_in_order() -> None:
    store = FakeStore()
    rng = random.Random(7)
    for _ in range(200):
        store.apply([rng.choice([b"a", b"b", b"c"])] if rng.random() < 0.8 else [])
    hub = WatchHub(store, max_buffer=10_000, batch=7)
    wake = asyncio.Event()
    w = hub.watch(b"a", b"c", 10, False, wake.set)  # keys a and b, after revision 10
    got: list[int] = []

    async def applier() -> None:
        for _ in range(300):
            store.apply([rng.choice([b"a", b"b", b"c"])])
            await asyncio.sleep(0)

    task = asyncio.create_task(applier())
    while not task.done() or w.queue or not w.live:
        if not w.queue:
            try:
                await asyncio.wait_for(wake.wait(), 0.05)
            except TimeoutError:
                pass
            wake.clear()
        events, _ = w.take(5)
        got += [e.revision for e in events]
    want = [e.revision for e in store.events if e.revision > 10 and e.key in (b"a", b"b")]
    assert got == want
    assert w.next_rev == store.applied + 1


@pytest.mark.asyncio
async def test_slow_consumer_is_cut_off_and_snapshot_ends_watches() -> None:
    store = FakeStore()
    hub = WatchHub(store, max_buffer=5)
    w = hub.watch(b"k", b"", 0, False, lambda: None)
    await asyncio.sleep(0.01)  # caught up: live
    assert w.live
    for _ in range(6):
        store.apply([b"k"])
    assert w.ended is not None and w.ended.code == "RESOURCE_EXHAUSTED" and not w.queue
    w2 = hub.watch(b"k", b"", 0, False, lambda: None)
    await asyncio.sleep(0.01)
    hub.on_snapshot(store.applied + 50)
    assert w2.ended is not None and w2.ended.code == "UNAVAILABLE" and w2.ended.floor == store.applied + 51
    store.floor = 4
    with pytest.raises(HistoryOutOfRange) as e:
        hub.watch(b"k", b"", 2, False, lambda: None)
    assert e.value.floor == 4
    hub.watch(b"k", b"", 3, False, lambda: None)  # from the oldest revision on: served
    hub.close()
