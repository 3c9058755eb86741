"""What the host is given from outside, rather than reaching for itself: its clock, the executor its
store's synced transactions run on, and the transport it sends through (it pulls what peers sent from the
transport's inbox, transport/inbox.py). The process lifecycle hands it the real ones; the simulator hands
it simulated ones, so the same host runs in both."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from ..core import Message
from ..transport.inbox import Inbox, PeerReport, SnapshotArrival

__all__ = ["Clock", "DiskRoom", "IOExecutor", "Inbox", "PeerReport", "PeerTransport", "SnapshotArrival", "SystemClock",
           "ThreadIO"]


class Clock(Protocol):
    """The host's monotonic clock: leases, staleness proofs, lag, deadlines. Timers are the event loop's
    (`call_later`), so a simulated clock comes with a simulated-time loop (sim/loop.py)."""

    def monotonic(self) -> float: ...

    def monotonic_ns(self) -> int: ...


class SystemClock:
    """time.monotonic: the real process's clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()


class IOExecutor(Protocol):
    """Where the store's synced transactions run, one at a time, off the loop."""

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any: ...

    def shutdown(self) -> None: ...


class ThreadIO:
    """One I/O thread: a Ready's fsync does not stall the loop, and transactions never overlap."""

    def __init__(self, node_id: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"raftkv-io-{node_id}")

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


class DiskRoom(Protocol):
    """The free space of the data directory's filesystem and its reserve file (storage/disk_space.py's
    DiskSpace), as the NOSPACE alarm uses it; called on the I/O executor."""

    low: str
    """Why the reserve was released; "" while it was not."""
    reserve: Any

    def create_reserve(self) -> bool: ...

    def ensure_room(self, need: int) -> None:
        """Raise ENOSPC unless `need` bytes and some headroom are free."""
        ...

    def restore(self) -> bool: ...


class PeerTransport(Protocol):
    """What the host calls on its transport. What peers send comes the other way through the
    transport's inbox, which the host pulls from (transport/inbox.py)."""

    def send(self, msgs: list[Message]) -> None: ...

    def add_peer(self, node_id: int, address: str, peer_address: str = "") -> None: ...

    def remove_peer(self, node_id: int) -> None: ...

    def peer_ids(self) -> list[int]: ...

    def snapshot_floor(self) -> int | None:
        """The lowest index of the snapshots being streamed to peers, which compaction keeps."""
        ...
