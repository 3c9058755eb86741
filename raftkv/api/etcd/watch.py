"""etcdserverpb.Watch on raftkv: etcd's watch stream over raftkv's watch hub (server/watch_hub.py).

Each create becomes one hub watch; this module only translates. What etcd clients rely on, as etcd 3.4
sends it:

- watch ids are per stream, assigned from 0 in creation order (or the client's `watch_id`); every create
  is answered `created` first, in order (clientv3 pairs them with its requests by that order);
- `start_revision` is inclusive (raftkv's `after` is exclusive); 0 means "from the next change";
- a start below this node's history floor is answered `created`, then a response with `compact_revision`
  (the oldest revision still kept) and `canceled` - clients report "required revision has been
  compacted"; when the hub ends a watch because the node stops, installed a snapshot or the client reads
  too slowly, the whole stream ends UNAVAILABLE, so clients resume their watches (see _RESUMABLE);
- filters NOPUT / NODELETE drop those events; `prev_kv` adds the previous record; `progress_notify`
  sends an empty response naming the current revision when the watch has been idle for
  --watch-progress-ms (etcd: every 10 minutes); a progress request is answered with watch id -1;
- `fragment` splits a revision's events over several responses when they exceed --max-request-bytes,
  every one but the last marked `fragment`.

Any node serves watches from its own applied state, as an etcd member does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import grpc

from ...proto.etcd_stubs import kv_pb2 as mvccpb
from ...proto.etcd_stubs import rpc_pb2 as epb
from ...proto.etcd_stubs import rpc_pb2_grpc as epb_grpc
from ...server.host import NodeHost
from ...server.watch_hub import DELETE, Event, Watch, WatchHub
from ...storage.errors import HistoryOutOfRange
from ..forward import Forwarder
from ..watch_stream import send_loop
from .base import EtcdBase
from .translate import kv_to_etcd

MAX_EVENTS_PER_MESSAGE = 1000
_NOPUT = epb.WatchCreateRequest.NOPUT
_NODELETE = epb.WatchCreateRequest.NODELETE


def event_to_etcd(e: Event, prev_kv: bool) -> mvccpb.Event:
    out = mvccpb.Event(type=mvccpb.Event.DELETE if e.kind == DELETE else mvccpb.Event.PUT, kv=kv_to_etcd(e.kv))
    if prev_kv and e.prev_body is not None:
        prev = e.prev
        assert prev is not None
        out.prev_kv.CopyFrom(kv_to_etcd(prev))
    return out


_RESUMABLE = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
"""Hub endings (node stopping, snapshot installed, client too slow) that end the whole stream UNAVAILABLE
instead of canceling the watch: etcd clients then reconnect and resume every watch after the last
revision they received (on this member or another), as when an etcd member goes away. A canceled watch
would instead end for good (etcdctl exits "watch is canceled by the server")."""


class _Resume(Exception):
    pass


class _EtcdWatch:
    """One etcd watch: the hub's watch and what etcd's create asked on top of it."""

    __slots__ = ("hub_watch", "drop", "progress_s", "last_sent", "fragment")

    def __init__(self, hub_watch: Watch, drop: set[str], progress_s: float, fragment: bool) -> None:
        self.hub_watch = hub_watch
        self.drop = drop
        self.progress_s = progress_s
        self.last_sent = time.monotonic()
        self.fragment = fragment


class _Stream:
    """The watches of one etcd stream and the responses owed to its client."""

    def __init__(self, svc: EtcdWatch) -> None:
        self.svc = svc
        self.watches: dict[int, _EtcdWatch] = {}
        self.out: list[epb.WatchResponse] = []
        self.wake = asyncio.Event()
        self.client_done = False
        self._next_id = 0

    def _id(self, asked: int) -> int:
        if asked:
            return asked
        while self._next_id in self.watches:
            self._next_id += 1
        wid = self._next_id
        self._next_id += 1
        return wid

    def _resp(self, wid: int, revision: int | None = None, **fields: object) -> epb.WatchResponse:
        return epb.WatchResponse(header=self.svc.header(revision), watch_id=wid, **fields)  # type: ignore[arg-type]

    def create(self, r: epb.WatchCreateRequest) -> None:
        svc = self.svc
        if r.watch_id and r.watch_id in self.watches:
            # etcd 3.4: a duplicate id is answered created=false, canceled=true with the reason
            self.out.append(self._resp(r.watch_id, created=False, canceled=True,
                                       cancel_reason="mvcc: duplicate watch ID provided on the WatchStream"))
            return
        wid = self._id(r.watch_id)
        end = r.range_end
        if end and end != b"\0" and end <= r.key:
            # etcd watches nothing for a reversed range; raftkv says so instead of waiting forever
            self.out.append(self._resp(wid, created=True))
            self.out.append(self._resp(wid, canceled=True, cancel_reason=f"watch range is empty: range_end "
                                       f"{end!r} is not after key {r.key!r}"))
            return
        start = r.start_revision
        try:
            hw = svc.hub.watch(r.key, end, 0, r.prev_kv, self.wake.set, from_revision=max(start, 0))
        except HistoryOutOfRange as e:
            self.out.append(self._resp(wid, created=True))
            self.out.append(self._resp(wid, compact_revision=e.floor, canceled=True))
            return
        drop = {k for f, k in ((_NOPUT, "put"), (_NODELETE, "delete")) if f in r.filters}
        progress_s = svc.host.cfg.watch_progress_ms / 1000 if r.progress_notify else 0.0
        self.watches[wid] = _EtcdWatch(hw, drop, progress_s, r.fragment)
        self.out.append(self._resp(wid, created=True))

    def cancel(self, wid: int) -> None:
        w = self.watches.pop(wid, None)
        if w is None:
            return  # etcd 3.4 answers nothing for an unknown id
        self.svc.hub.cancel(w.hub_watch)
        self.out.append(self._resp(wid, canceled=True))

    def progress(self) -> None:
        """A progress request: the revision every watch of the stream has seen, if they all are idle."""
        if any(w.hub_watch.queue for w in self.watches.values()):
            return  # etcd also sends none while a watch is not synced
        self.out.append(self._resp(-1))

    def collect(self) -> float:
        """Move what the watches hold into `out`; the seconds until the next progress notification is due."""
        now = time.monotonic()
        next_due = 3600.0
        for wid, w in list(self.watches.items()):
            hw = w.hub_watch
            if hw.ended is not None:
                del self.watches[wid]
                if hw.ended.code == "OUT_OF_RANGE":
                    self.out.append(self._resp(wid, compact_revision=hw.ended.floor, canceled=True))
                elif hw.ended.code in _RESUMABLE:
                    raise _Resume(hw.ended.message)
                else:
                    self.out.append(self._resp(wid, canceled=True, cancel_reason=hw.ended.message))
                continue
            sent = False
            while hw.queue:
                events, upto = hw.take(MAX_EVENTS_PER_MESSAGE)
                mine = [event_to_etcd(e, hw.prev_kv) for e in events if e.kind not in w.drop]
                if mine:
                    self._events(wid, w, mine, upto)
                    sent = True
            if sent:
                w.last_sent = now
            elif w.progress_s and now - w.last_sent >= w.progress_s:
                rev = self.svc.hub.progress_revision(hw)
                if rev is not None:
                    self.out.append(self._resp(wid, rev))
                    w.last_sent = now
            if w.progress_s:
                next_due = min(next_due, max(0.0, w.last_sent + w.progress_s - now))
        return next_due

    def _events(self, wid: int, w: _EtcdWatch, events: list[mvccpb.Event], upto: int) -> None:
        limit = self.svc.host.cfg.max_request_bytes
        if not w.fragment or sum(e.ByteSize() for e in events) <= limit:
            self.out.append(self._resp(wid, upto, events=events))
            return
        chunk: list[mvccpb.Event] = []
        size = 0
        pieces: list[list[mvccpb.Event]] = []
        for e in events:
            if chunk and size + e.ByteSize() > limit:
                pieces.append(chunk)
                chunk, size = [], 0
            chunk.append(e)
            size += e.ByteSize()
        pieces.append(chunk)
        for i, piece in enumerate(pieces):
            self.out.append(self._resp(wid, upto, events=piece, fragment=i < len(pieces) - 1))

    def close(self) -> None:
        for w in self.watches.values():
            self.svc.hub.cancel(w.hub_watch)
        self.watches.clear()


class EtcdWatch(EtcdBase, epb_grpc.WatchServicer):
    def __init__(self, host: NodeHost, cluster_id: Callable[[], bytes], forwarder: Forwarder, hub: WatchHub) -> None:
        super().__init__(host, cluster_id, forwarder)
        self.hub = hub

    async def Watch(self, request_iterator: AsyncIterator[epb.WatchRequest],
                    context: grpc.aio.ServicerContext) -> AsyncIterator[epb.WatchResponse]:
        if self.host.removal.removed:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(self.host.removal.error()))
        st = _Stream(self)
        async for msg in send_loop(st, self._read(request_iterator, st), context, _Resume,
                                   grpc.StatusCode.UNAVAILABLE):
            yield msg

    @staticmethod
    async def _read(requests: AsyncIterator[epb.WatchRequest], st: _Stream) -> None:
        try:
            async for r in requests:
                kind = r.WhichOneof("request_union")
                if kind == "create_request":
                    st.create(r.create_request)
                elif kind == "cancel_request":
                    st.cancel(r.cancel_request.watch_id)
                elif kind == "progress_request":
                    st.progress()
                st.wake.set()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the client went away; the stream ends with it
            pass
        st.client_done = True
        st.wake.set()


__all__ = ["EtcdWatch", "event_to_etcd"]
