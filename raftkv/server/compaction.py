"""Compaction scheduling: when to record a snapshot point and compact the log, and running it on the
host's I/O executor, one at a time. No copy of the state machine is made: the store's durable state at
its applied index is the snapshot, streamed to a follower that needs one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from ..core import RaftNode
from .config import ServerConfig
from .ports import Clock, IOExecutor, PeerTransport
from .store import NodeStore

log = structlog.get_logger("raftkv.host")

SNAPSHOT_RETRY_SECONDS = 10.0
LOG_SIZE_CHECK_EVERY = 64


class Compactor:
    def __init__(self, cfg: ServerConfig, store: NodeStore, node: Callable[[], RaftNode], transport: PeerTransport,
                 io: IOExecutor, clock: Clock) -> None:
        self.cfg = cfg
        self.store = store
        self._node = node
        self.transport = transport
        self.io = io
        self.clock = clock
        self._task: asyncio.Task[int] | None = None
        self._retry_at = 0.0
        self._size_checked_at = 0

    @property
    def running(self) -> bool:
        """A compaction is under way (it may be writing to the store from the I/O executor)."""
        return self._task is not None and not self._task.done()

    def maybe_start(self) -> None:
        """After an apply: start a compaction if the log has grown past its bounds (and none failed
        within SNAPSHOT_RETRY_SECONDS)."""
        if self._needs_compaction() and self.clock.monotonic() >= self._retry_at:
            self.compaction()

    def compaction(self) -> asyncio.Task[int]:
        """The compaction under way, or a new one."""
        task = self._task
        if task is None or task.done():
            task = self._task = asyncio.create_task(self._take_snapshot(), name="raftkv-snapshot")
            task.add_done_callback(self._finished)
        return task

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _take_snapshot(self) -> int:
        """Record a snapshot point and compact the log on the I/O executor, keeping the newest
        `snapshot_keep_entries` entries so a briefly lagging follower catches up without a snapshot."""
        # From the applied index the store holds durably: entries applied only into the write-back buffer
        # are re-applied from the log after a crash, so they stay (the store enforces it too).
        compact_to = max(0, self.store.durable_applied_index() - self.cfg.snapshot_keep_entries)
        floor = self.transport.snapshot_floor()
        if floor is not None:  # a follower installing that snapshot will need the entries after it
            compact_to = min(compact_to, floor)
        node = self._node()
        if node.is_witness():
            # A witness drops only what every data voter durably holds: the rest it may have to hand a
            # data node as caretaker. Its snapshot point carries no data (index, term, membership).
            compact_to = min(compact_to, node.raft.data_floor)
        index = await self.io.run(self.store.start_compaction, compact_to, self._node().conf_as_of(compact_to))
        # The deletes follow in short steps, each its own job on the I/O executor, so that a Ready's
        # transaction waits for one step at most (a whole compaction after a large load is seconds long).
        steps = 1
        while await self.io.run(self.store.compaction_step):
            steps += 1
        log.info("log compacted", snapshot_index=index, compacted_through=compact_to, steps=steps)
        damaged = self.store.take_damaged_history()
        if damaged:
            log.warning("deleted damaged change-history rows that retention let go", revisions=damaged[:20],
                        count=len(damaged), consequence="none: they were past the history kept; look at the disk")
        return int(index)

    def _finished(self, task: asyncio.Task[int]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._retry_at = self.clock.monotonic() + SNAPSHOT_RETRY_SECONDS
            log.error("snapshot failed; the log keeps growing until one succeeds", error=str(task.exception()),
                      retry_in_seconds=SNAPSHOT_RETRY_SECONDS)

    def _needs_compaction(self) -> bool:
        """By count, or by size -- but never more often than every `snapshot_keep_entries` entries, since
        that many stay in the log after each compaction whatever their size."""
        # Counted from the applied index the store holds durably, the most a compaction may take.
        since = self.store.durable_applied_index() - self.store.snapshot_index()
        if since >= self.cfg.snapshot_entries:
            return True
        # The size is read from the store, on the apply path: at most once per LOG_SIZE_CHECK_EVERY
        # entries (or per snapshot_keep_entries, if fewer).
        every = max(1, min(LOG_SIZE_CHECK_EVERY, self.cfg.snapshot_keep_entries))
        durable = self.store.durable_applied_index()
        if since < self.cfg.snapshot_keep_entries or durable - self._size_checked_at < every:
            return False
        self._size_checked_at = durable
        return self.store.log_bytes() >= self.cfg.snapshot_log_bytes
