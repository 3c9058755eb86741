"""The watch hub: change events from the applied entries to the watches of this node.

A watch asks for every event on a key or range with revision >= `start`, in revision order, once. It
first catches up from the store's history (storage/history.py, read on a worker thread, a bounded batch
at a time), then goes live: the store calls `on_applied(events, applied)` on the applying thread (the
host's loop) after each apply, and the hub hands each live watch the events it matches. Both paths
move one mark, `next_rev` (every event below it has been queued or did not match), and the switch from
catching up to live happens on the loop between two applies, so no event is queued twice or missed.

Memory is bounded: a watch queues at most `max_buffer` events; a catching-up watch reads its next batch
only once its consumer has taken the last, and a live watch that falls that far behind is cancelled
(RESOURCE_EXHAUSTED), never buffered without end. A snapshot installed on this node skips events, so
every watch it would make miss some is cancelled (UNAVAILABLE: resume on another node, whose history
has them). The hub knows nothing of gRPC or of raftkv's protos: the API turns its watches into a stream
(api/watch_service.py), and an etcd adapter can do the same.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from ..storage.history import DELETE, PUT, Event, HistoryOutOfRange, Retention

log = structlog.get_logger("raftkv.watch")

DEFAULT_MAX_BUFFER = 10_000
CATCH_UP_BATCH = 1_000


__all__ = ["DELETE", "PUT", "Event", "Watch", "WatchEnded", "WatchHub", "configure_history"]


def configure_history(store: Any, revisions: int, seconds: float, max_bytes: int) -> None:
    """Set how much history the store keeps (its retention, enforced at compaction)."""
    store.history_retention = Retention(revisions, seconds, max_bytes)


class HistorySource(Protocol):
    """What the hub reads: the store (node_store.LmdbNodeStore)."""

    event_sink: Any

    def applied_index(self) -> int: ...

    def history_floor(self) -> int: ...

    def history_events(self, start: int, end: int, limit: int = ...) -> list[Event]: ...


@dataclass(slots=True)
class WatchEnded:
    """Why a watch ended: a gRPC status code name, a message, and (OUT_OF_RANGE) the oldest revision."""

    code: str
    message: str
    floor: int = 0


class Watch:
    """One watch. Its consumer calls `take()` when `notify` fires, until it returns nothing."""

    def __init__(self, hub: WatchHub, watch_id: int, key: bytes, range_end: bytes, start: int, prev_kv: bool,
                 notify: Callable[[], None]) -> None:
        self.hub = hub
        self.watch_id = watch_id
        self.key = key
        self.range_end = range_end
        self.prev_kv = prev_kv
        self.next_rev = start
        """Every matching event with a lower revision is queued (or was taken)."""
        self.queue: deque[Event] = deque()
        self.live = False
        self.ended: WatchEnded | None = None
        self._notify = notify
        self._drained = asyncio.Event()
        self._drained.set()

    def matches(self, key: bytes) -> bool:
        end = self.range_end
        if not end:
            return key == self.key
        if end == b"\0":
            return key >= self.key
        return self.key <= key < end

    def take(self, max_events: int = 1000) -> tuple[list[Event], int]:
        """Queued events, whole revisions, at most about `max_events`; and the revision up to which every
        event of this watch has now been handed over (the resume point)."""
        out: list[Event] = []
        q = self.queue
        while q and (len(out) < max_events or q[0].revision == out[-1].revision):
            out.append(q.popleft())
        if not q:
            self._drained.set()
        upto = self.next_rev - 1 if not q else out[-1].revision
        return out, upto

    def _queue(self, events: list[Event]) -> None:
        if not events:
            return
        self.queue.extend(events)
        self._drained.clear()
        self._notify()

    def _end(self, why: WatchEnded) -> None:
        if self.ended is None:
            self.ended = why
            self.queue.clear()
            self._drained.set()
            self._notify()


class WatchHub:
    def __init__(self, store: HistorySource, max_buffer: int = DEFAULT_MAX_BUFFER,
                 batch: int = CATCH_UP_BATCH) -> None:
        self.store = store
        self.max_buffer = max_buffer
        self.batch = batch
        self.watches: set[Watch] = set()
        self._live: list[Watch] = []
        self._ids = itertools.count(1)
        store.event_sink = self.on_applied

    # -- watches --------------------------------------------------------------------------------
    def new_id(self) -> int:
        return next(self._ids)

    def watch(self, key: bytes, range_end: bytes, after: int, prev_kv: bool, notify: Callable[[], None],
              watch_id: int = 0) -> Watch:
        """A watch of every event after revision `after` (0: after this node's applied index); raises
        HistoryOutOfRange when events it asks for are no longer (or never were) in this node's history."""
        applied = self.store.applied_index()
        start = after + 1 if after else applied + 1
        floor = self.store.history_floor()
        if start < floor:
            raise HistoryOutOfRange(start, floor)
        w = Watch(self, watch_id or self.new_id(), key, range_end, start, prev_kv, notify)
        self.watches.add(w)
        w._task = asyncio.get_running_loop().create_task(self._catch_up(w))  # type: ignore[attr-defined]
        return w

    def cancel(self, w: Watch) -> None:
        """The consumer ends the watch (its client canceled it, or the stream ended)."""
        self._detach(w)
        w._end(WatchEnded("CANCELLED", "canceled by the client"))

    def _fail(self, w: Watch, why: WatchEnded) -> None:
        self._detach(w)
        w._end(why)

    def _detach(self, w: Watch) -> None:
        self.watches.discard(w)
        if w.live:
            self._live.remove(w)
            w.live = False
        task = getattr(w, "_task", None)
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    async def _catch_up(self, w: Watch) -> None:
        """History from `next_rev` up to the applied index, a batch at a time, then live."""
        try:
            while w.ended is None:
                upto = self.store.applied_index()
                if w.next_rev > upto:  # no await between this check and going live: no apply in between
                    w.live = True
                    self._live.append(w)
                    return
                await w._drained.wait()
                if w.ended is not None:
                    return
                events = await asyncio.to_thread(self.store.history_events, w.next_rev, upto, self.batch)
                if w.ended is not None:
                    return
                if events and events[-1].revision < upto and len(events) >= self.batch:
                    nxt = events[-1].revision + 1  # cut at a revision boundary: the rest next time
                else:
                    nxt = upto + 1
                w._queue([e for e in events if e.revision >= w.next_rev and w.matches(e.key)])
                w.next_rev = max(w.next_rev, nxt)
                if not w.queue:
                    w._notify()  # nothing matched: the consumer may still report progress
        except HistoryOutOfRange as e:
            self._fail(w, WatchEnded("OUT_OF_RANGE", str(e), e.floor))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a watch that cannot read its history ends, with the reason
            log.warning("watch catch-up failed", watch_id=w.watch_id, error=str(e))
            self._fail(w, WatchEnded("UNAVAILABLE", f"cannot read this node's history: {e}"))

    # -- feeds ----------------------------------------------------------------------------------
    def on_applied(self, events: list[Event], applied: int) -> None:
        """Called by the store after each apply, on the applying thread."""
        if not self._live:
            return
        for w in list(self._live):
            mine = [e for e in events if e.revision >= w.next_rev and w.matches(e.key)]
            w.next_rev = max(w.next_rev, applied + 1)
            if not mine:
                continue
            if len(w.queue) + len(mine) > self.max_buffer:
                self._fail(w, WatchEnded(
                    "RESOURCE_EXHAUSTED",
                    f"watch {w.watch_id} fell more than {self.max_buffer} events behind (the client reads too "
                    f"slowly); resume after the last revision it received"))
                continue
            w._queue(mine)

    def on_snapshot(self, index: int) -> None:
        """This node installed a snapshot at `index`: the events up to it are not in its history."""
        for w in list(self.watches):
            if w.next_rev <= index:
                self._fail(w, WatchEnded(
                    "UNAVAILABLE", f"this node installed a snapshot at revision {index} and has no history before "
                    f"{index + 1}; resume the watch on another node", index + 1))

    def progress_revision(self, w: Watch) -> int | None:
        """The revision a progress notification may name for `w`: all its events up to it handed over."""
        if w.queue or w.ended is not None:
            return None
        return w.next_rev - 1

    def close(self) -> None:
        for w in list(self.watches):
            self._fail(w, WatchEnded("UNAVAILABLE", "the node is shutting down; resume on another node"))
        if self.store.event_sink == self.on_applied:
            self.store.event_sink = None
