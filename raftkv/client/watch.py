"""Watch iterators: every event after a revision, in order, once, across the loss of the serving node.

The iterator keeps the revision up to which it has had every event (each message says it; progress
notifications say it when idle). When the stream breaks (the node died, shut down, installed a snapshot,
or became unreachable), it opens the watch again on another node after that revision, so no event is lost
or repeated. A watch the cluster cannot serve as asked (a compacted revision: OUT_OF_RANGE naming the oldest
one; a bad range; too slow a reader) raises `WatchCanceledError` with the status."""

from __future__ import annotations

import queue
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc

from ..proto.stubs import watch_pb2 as wpb
from .errors import RaftKVError, from_rpc_error
from .requests import _b, prefix_end

SILENCE_INTERVALS = 3
"""A stream silent for this many progress intervals is given up and the watch resumed on another node:
its node is paused or unreachable (a live node sends a progress notification every interval)."""
DEFAULT_PROGRESS_MS = 2000

RESUMABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
"""Stream failures after which the watch is opened again on another node."""


class WatchCanceledError(RaftKVError):
    """The cluster ended the watch: `code` says why; `compact_revision` = the oldest revision it has."""

    def __init__(self, message: str, code: grpc.StatusCode | None, compact_revision: int = 0) -> None:
        super().__init__(message, code, code.name if code else "")
        self.compact_revision = compact_revision


def _code(number: int) -> grpc.StatusCode | None:
    return next((c for c in grpc.StatusCode if c.value[0] == number), None)


def create_request(key: bytes | str, range_end: bytes | str, prefix: bool, after: int, prev_kv: bool,
                   progress_ms: int) -> wpb.WatchCreateRequest:
    k = _b(key)
    end = prefix_end(k) if prefix else _b(range_end)
    return wpb.WatchCreateRequest(key=k, range_end=end, after_revision=after, prev_kv=prev_kv,
                                  progress_interval_ms=progress_ms, watch_id=1)


class _Resume:
    """The state of one watch across streams: where to resume, and whether a cancellation is final."""

    def __init__(self, after: int, attempts_timeout: float) -> None:
        self.after = after
        self.timeout = attempts_timeout
        self.failed_since: float | None = None

    def on_reply(self, r: wpb.WatchResponse) -> bool:
        """True when `r` is worth yielding (events or a progress notification). Raises a final cancellation."""
        self.failed_since = None
        if r.canceled:
            code = _code(r.cancel_code)
            if code == grpc.StatusCode.UNAVAILABLE:  # e.g. a snapshot skipped events there: go elsewhere
                raise _Moved(r.cancel_reason)
            raise WatchCanceledError(r.cancel_reason or "watch canceled", code, r.compact_revision)
        if r.created:
            if not self.after:
                self.after = r.revision  # "from now": now is fixed, a resume continues from it
            return False
        self.after = max(self.after, r.revision)
        return bool(r.events) or r.progress_notify

    def on_break(self, e: BaseException) -> None:
        """A stream broke: resume elsewhere, unless it has been failing for the whole timeout."""
        err = e if isinstance(e, RaftKVError) else from_rpc_error(e) if isinstance(e, grpc.RpcError) else None
        if err is not None and err.code not in RESUMABLE:
            raise err
        now = time.monotonic()
        if self.failed_since is None:
            self.failed_since = now
        elif now - self.failed_since > self.timeout:
            raise err if err is not None else RaftKVError(str(e), grpc.StatusCode.UNAVAILABLE)


class _Moved(Exception):
    pass


class _Watchdog:
    """Cancels a stream that stays silent longer than `limit` seconds (its iterator then raises CANCELLED,
    and the watch resumes elsewhere)."""

    def __init__(self, stream: Any, limit: float) -> None:
        import threading

        self.stream = stream
        self.limit = limit
        self.last = time.monotonic()
        self._done = threading.Event()
        threading.Thread(target=self._run, name="raftkv-watchdog", daemon=True).start()

    def heard(self) -> None:
        self.last = time.monotonic()

    def _run(self) -> None:
        while not self._done.wait(min(1.0, self.limit / 4)):
            if time.monotonic() - self.last > self.limit:
                self.stream.cancel()
                return

    def stop(self) -> None:
        self._done.set()


class WatchCalls:
    """Mixed into `Client`: needs `_stub`, `endpoints`, `timeout`."""

    _stub: Any
    call: Any
    endpoints: Any
    timeout: float

    def compact(self, revision: int, timeout: float | None = None) -> wpb.CompactResponse:
        """Discard the watch history before `revision` on every node (through the log)."""
        return self.call("Compact", wpb.CompactRequest(revision=revision), "txn", admin="Watch", timeout=timeout)

    def watch(self, key: bytes | str, range_end: bytes | str = b"", prefix: bool = False, after_revision: int = 0,
              prev_kv: bool = False, progress_interval_ms: int = 0) -> Iterator[wpb.WatchResponse]:
        """Every change of the key (range, prefix) after `after_revision` (0: from now), as WatchResponse
        messages (events of whole revisions, or progress notifications), until the iterator is closed."""
        progress_ms = progress_interval_ms or DEFAULT_PROGRESS_MS
        req = create_request(key, range_end, prefix, after_revision, prev_kv, progress_ms)
        state = _Resume(after_revision, max(self.timeout, 10.0))
        addresses = list(self.endpoints.addresses)
        i = 0
        while True:
            address = addresses[i % len(addresses)]
            i += 1
            req.after_revision = state.after
            requests: queue.Queue[wpb.WatchRequest | None] = queue.Queue()
            requests.put(wpb.WatchRequest(create=req))

            def feed(q: queue.Queue[wpb.WatchRequest | None] = requests) -> Iterator[wpb.WatchRequest]:
                while (item := q.get()) is not None:
                    yield item

            try:
                stream = self._stub(address, "Watch").Watch(feed())
            except ValueError:  # the client was closed: the watch ends with it
                return
            dog = _Watchdog(stream, SILENCE_INTERVALS * progress_ms / 1000 + 1.0)
            try:
                for r in stream:
                    dog.heard()
                    if state.on_reply(r):
                        yield r
                state.on_break(RaftKVError("the watch stream ended", grpc.StatusCode.UNAVAILABLE))
            except _Moved:
                pass
            except grpc.RpcError as e:
                state.on_break(e)
                time.sleep(0.1)
            finally:
                dog.stop()
                requests.put(None)
                stream.cancel()


class AsyncWatchCalls:
    """Mixed into `AsyncClient`."""

    _stub: Any
    _closed: bool
    endpoints: Any
    timeout: float

    async def watch(self, key: bytes | str, range_end: bytes | str = b"", prefix: bool = False,
                    after_revision: int = 0, prev_kv: bool = False,
                    progress_interval_ms: int = 0) -> AsyncIterator[wpb.WatchResponse]:
        """As `Client.watch`, asynchronously."""
        import asyncio

        progress_ms = progress_interval_ms or DEFAULT_PROGRESS_MS
        req = create_request(key, range_end, prefix, after_revision, prev_kv, progress_ms)
        state = _Resume(after_revision, max(self.timeout, 10.0))
        addresses = list(self.endpoints.addresses)
        silence = SILENCE_INTERVALS * progress_ms / 1000 + 1.0
        i = 0
        while True:
            address = addresses[i % len(addresses)]
            i += 1
            req.after_revision = state.after
            try:
                call = self._stub(address, "Watch").Watch()
            except ValueError:  # the client was closed: the watch ends with it
                return
            try:
                await call.write(wpb.WatchRequest(create=req))
                while True:
                    try:
                        r = await asyncio.wait_for(call.read(), silence)
                    except TimeoutError:  # the node is paused or unreachable: resume elsewhere
                        state.on_break(RaftKVError("the watch stream went silent", grpc.StatusCode.UNAVAILABLE))
                        break
                    if r is grpc.aio.EOF:
                        state.on_break(RaftKVError("the watch stream ended", grpc.StatusCode.UNAVAILABLE))
                        break
                    if state.on_reply(r):
                        yield r
            except _Moved:
                pass
            except grpc.RpcError as e:
                state.on_break(e)
                await asyncio.sleep(0.1)
            except asyncio.CancelledError:
                if self._closed:  # closing the client cancelled the call: the watch ends with it
                    return
                raise
            finally:
                call.cancel()
