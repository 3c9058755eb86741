"""The Watch service: watches of the hub (server/watch_hub.py) as one bidirectional gRPC stream.

A stream carries many watches: each create is answered `created` (or `canceled` with a status code when it
cannot be served: an empty or reversed range, a compacted revision, too many watches on the stream), then
its events, whole revisions per message, each message naming the revision up to which the watch has had
every event (the client's resume point), and a progress notification when it has been idle for its
interval. A watch whose client reads too slowly ends the whole stream with RESOURCE_EXHAUSTED: the
stream's messages are what the client is not reading. Any node serves watches, from its applied state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from ..layers.acks import AckRequest
from ..layers.admission import Admission, Overloaded
from ..proto.stubs import watch_pb2 as wpb
from ..proto.stubs import watch_pb2_grpc
from ..server.host import NodeHost
from ..server.watch_hub import DELETE, Event, Watch, WatchHub
from ..storage import commands
from ..storage.errors import HistoryOutOfRange
from .convert import Validator, kv_to_pb
from .errors import RequestError, invalid, rpc
from .forward import Forwarder
from .watch_stream import send_loop

MAX_EVENTS_PER_MESSAGE = 1000


def event_to_pb(e: Event, prev_kv: bool) -> wpb.Event:
    out = wpb.Event(type=wpb.Event.DELETE if e.kind == DELETE else wpb.Event.PUT, kv=kv_to_pb(e.kv))
    if prev_kv and e.prev_body is not None:
        out.prev_kv.CopyFrom(kv_to_pb(e.prev))
    return out


def _ended(watch_id: int, code: str, message: str, floor: int = 0, served_by: int = 0) -> wpb.WatchResponse:
    return wpb.WatchResponse(watch_id=watch_id, canceled=True, cancel_code=grpc.StatusCode[code].value[0],
                             cancel_reason=message, compact_revision=floor, served_by=served_by)


class _Stream:
    """The watches of one stream and the messages owed to its client."""

    def __init__(self, svc: WatchService) -> None:
        self.svc = svc
        self.watches: dict[int, tuple[Watch, float, float]] = {}  # id -> watch, progress interval s, last sent
        self.out: list[wpb.WatchResponse] = []
        self.wake = asyncio.Event()
        self.client_done = False

    def create(self, r: wpb.WatchCreateRequest) -> None:
        svc = self.svc
        me = svc.host.cfg.id
        wid = r.watch_id
        try:
            key = svc.v.key(r.key)
            end = commands.prefix_end(key) if r.prefix else svc.v.range_end(r.range_end)
            if end and end != b"\0" and end <= key:
                raise invalid(f"watch range is empty: range_end {end!r} is not after key {key!r}")
            if wid < 0:
                raise invalid(f"watch_id must not be negative, not {wid}")
            if wid and wid in self.watches:
                raise invalid(f"watch_id {wid} is already in use on this stream")
            if len(self.watches) >= svc.host.cfg.max_watches_per_stream:
                self.out.append(_ended(wid, "RESOURCE_EXHAUSTED",
                                       f"this stream already holds {len(self.watches)} watches, the most allowed "
                                       "(--max-watches-per-stream); open another stream", served_by=me))
                return
            Admission.of(svc.host).check_watch()
            w = svc.hub.watch(key, end, r.after_revision, r.prev_kv, self.wake.set, watch_id=wid)
        except Overloaded as e:
            self.out.append(_ended(wid, "RESOURCE_EXHAUSTED", f"OVERLOADED: {e}", served_by=me))  # another node may serve it
            return
        except HistoryOutOfRange as e:
            self.out.append(_ended(wid, "OUT_OF_RANGE", str(e), e.floor, me))
            return
        except Exception as e:  # noqa: BLE001 - validation errors carry their status
            code = getattr(e, "code", grpc.StatusCode.INVALID_ARGUMENT)
            self.out.append(_ended(wid, code.name, str(e), served_by=me))
            return
        interval = (r.progress_interval_ms or svc.host.cfg.watch_progress_ms) / 1000
        self.watches[w.watch_id] = (w, interval, time.monotonic())
        self.out.append(wpb.WatchResponse(watch_id=w.watch_id, created=True, revision=w.next_rev - 1, served_by=me))

    def cancel(self, wid: int) -> None:
        entry = self.watches.pop(wid, None)
        if entry is None:
            self.out.append(_ended(wid, "NOT_FOUND", f"no watch {wid} on this stream", served_by=self.svc.host.cfg.id))
            return
        self.svc.hub.cancel(entry[0])
        self.out.append(wpb.WatchResponse(watch_id=wid, canceled=True, cancel_reason="canceled by the client",
                                          served_by=self.svc.host.cfg.id))

    def collect(self) -> float:
        """Move what the watches hold into `out`; the seconds until the next progress notification is due."""
        me = self.svc.host.cfg.id
        now = time.monotonic()
        next_due = 3600.0
        for wid, (w, interval, last) in list(self.watches.items()):
            if w.ended is not None:
                del self.watches[wid]
                if w.ended.code == "RESOURCE_EXHAUSTED":
                    self.svc.count("watch_slow_cancels", 1)
                    raise _SlowClient(w.ended.message)
                self.out.append(_ended(wid, w.ended.code, w.ended.message, w.ended.floor, me))
                continue
            sent = False
            while w.queue:
                events, upto = w.take(MAX_EVENTS_PER_MESSAGE)
                self.out.append(wpb.WatchResponse(watch_id=wid, revision=upto, served_by=me,
                                                  events=[event_to_pb(e, w.prev_kv) for e in events]))
                self.svc.count("watch_events_sent", len(events))
                sent = True
            if sent:
                last = now
            elif now - last >= interval:
                rev = self.svc.hub.progress_revision(w)
                if rev is not None:
                    self.out.append(wpb.WatchResponse(watch_id=wid, revision=rev, progress_notify=True, served_by=me))
                    last = now
            self.watches[wid] = (w, interval, last)
            next_due = min(next_due, max(0.0, last + interval - now))
        return next_due

    def close(self) -> None:
        for w, _, _ in self.watches.values():
            self.svc.hub.cancel(w)
        self.watches.clear()


class _SlowClient(Exception):
    pass


class WatchService(watch_pb2_grpc.WatchServicer):
    def __init__(self, host: NodeHost, hub: WatchHub, forwarder: Forwarder, acks: Any, replies: Any) -> None:
        self.host = host
        self.replies = replies
        self.hub = hub
        self.fwd = forwarder
        self.acks = acks
        self.v = Validator(host.cfg)

    def count(self, counter: str, n: int) -> None:
        """Add `n` to one of the node's watch counters (none in a host without metrics)."""
        c = getattr(getattr(self.host, "metrics", None), counter, None)
        if c is not None:
            c.inc(n)

    async def Watch(self, request_iterator: AsyncIterator[wpb.WatchRequest],
                    context: grpc.aio.ServicerContext) -> AsyncIterator[wpb.WatchResponse]:
        if self.host.removal.removed:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(self.host.removal.error()))
        st = _Stream(self)
        async for msg in send_loop(st, self._read(request_iterator, st), context, _SlowClient,
                                   grpc.StatusCode.RESOURCE_EXHAUSTED):
            yield msg

    @staticmethod
    async def _read(requests: AsyncIterator[wpb.WatchRequest], st: _Stream) -> None:
        try:
            async for r in requests:
                kind = r.WhichOneof("request")
                if kind == "create":
                    st.create(r.create)
                elif kind == "cancel":
                    st.cancel(r.cancel.watch_id)
                st.wake.set()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the client went away; the stream ends with it
            pass
        st.client_done = True
        st.wake.set()

    @rpc
    async def Compact(self, request: wpb.CompactRequest, context: grpc.aio.ServicerContext) -> wpb.CompactResponse:
        if request.revision < 1:
            raise invalid("revision must be >= 1")
        applied = self.host.applied
        if request.revision > applied + 1:
            raise RequestError(grpc.StatusCode.OUT_OF_RANGE,
                               f"revision {request.revision} is in the future: the newest revision is {applied}",
                               "FUTURE_REVISION")
        if not self.host.is_leader:
            return await self.fwd.call("Watch", "Compact", request, context)
        out = await self.acks.write(commands.encode(commands.CompactHistory(request.revision)), AckRequest())
        reply = wpb.CompactResponse(oldest_revision=int(out.result))
        reply.meta.CopyFrom(self.replies.write_meta(out))
        return reply


__all__ = ["WatchService", "event_to_pb"]
