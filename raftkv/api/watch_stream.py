"""The send loop of a watch stream, shared by raftkv.v1's Watch and etcd's: collect what the stream's
watches hold, hand it to gRPC, then sleep until a watch has more (or a progress notification is due).

The wake-up is cleared before collecting, so an event queued from then on, even while a message is being
handed to gRPC, sets it again and the sleep does not pass over it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Protocol

import grpc


class StreamState(Protocol):
    wake: asyncio.Event
    out: list[Any]
    watches: dict[int, Any]
    client_done: bool

    def collect(self) -> float:
        """Move what the watches hold into `out`; the seconds until the next progress notification."""

    def close(self) -> None: ...


async def send_loop(st: StreamState, reader: Coroutine[Any, Any, None], context: grpc.aio.ServicerContext,
                    ends: type[Exception], code: grpc.StatusCode) -> AsyncIterator[Any]:
    """Yield the stream's messages until the client is done and no watch is left. `reader` (the task that
    reads the client's requests into `st`) runs meanwhile; `ends` raised by `collect` aborts the stream with
    `code` and its message."""
    task = asyncio.get_running_loop().create_task(reader)
    try:
        while True:
            st.wake.clear()
            try:
                due = st.collect()
            except ends as e:
                await context.abort(code, str(e))
            out, st.out = st.out, []
            for msg in out:
                yield msg
            if st.client_done and not st.watches:
                return
            if st.out:
                continue
            try:
                await asyncio.wait_for(st.wake.wait(), timeout=max(0.01, due))
            except TimeoutError:
                pass
    finally:
        task.cancel()
        st.close()
