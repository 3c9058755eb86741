"""The Watch stream of raftkv.v1 over a real watch hub and service, driven step by step: an event applied
while the stream is handing an earlier message to gRPC (the generator suspended at its `yield`) is sent
next, at once; it used to wait for the next progress notification, because the stream cleared its wake-up
after that `yield` and so lost the one the event had set."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest

from raftkv.api.watch_service import WatchService
from raftkv.proto.stubs import watch_pb2 as wpb
from raftkv.server.config import ServerConfig
from raftkv.server.watch_hub import WatchHub

from ..server.test_watch_hub import FakeStore


class _Host:
    """What the Watch service reads of its node (admission control keeps a weak reference to it)."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.removal = SimpleNamespace(removed=False)
        self.metrics = None


@pytest.mark.asyncio
async def test_an_event_applied_during_a_send_is_sent_next_not_at_the_next_progress() -> None:
    store = FakeStore()
    hub = WatchHub(store)
    cfg = ServerConfig(id=1, watch_progress_ms=600_000)  # the next progress notification: 10 minutes away
    host = _Host(cfg)
    svc = WatchService(host, hub, None, None, None)  # type: ignore[arg-type]
    client_done = asyncio.Event()

    async def requests() -> AsyncIterator[wpb.WatchRequest]:
        yield wpb.WatchRequest(create=wpb.WatchCreateRequest(key=b"k"))
        await client_done.wait()

    stream = svc.Watch(requests(), None)  # type: ignore[arg-type]
    try:
        created = await asyncio.wait_for(stream.__anext__(), 10)
        assert created.created
        store.apply([b"k"])  # while the stream is suspended at the `yield` of `created`
        nxt = await asyncio.wait_for(stream.__anext__(), 10)
        assert [e.kv.key for e in nxt.events] == [b"k"] and nxt.revision == 1
    finally:
        client_done.set()
        await stream.aclose()
