"""Transport: one outgoing stream per peer, and the Raft service that receives streams from peers.

Each peer has its own bounded queue and sender task, so a dead or slow peer never blocks the host or the
other peers: when its queue is full, messages to it are dropped (Raft retransmits what matters) and the
host is told the peer is unreachable, so the leader stops streaming to it and probes instead. Messages
queued while a send is in flight go out together as the next batch.

Only members speak Raft. Every stream is checked before a message of it reaches the host: the
connection's certificate when peers are authenticated (`tls.PeerAuth`), then every batch by the host's
`PeerGate` (cluster id, membership, the sender's certificate and incarnation), and every message inside a
batch must come from the batch's sender. A refused stream is failed with the status that says why, logged
once; the sender logs the refusal once too, and tells its gate (a node refused by its peers is not ready).

A peer whose membership names a TCP peer port is sent to over TCP frames instead (tcp_peer.py: `TcpPeer`
is a `_Peer` with another `run`, and the peer port hands each batch to `_RaftService.accept`), so the
queue, the batches and the checks above are the same code on both paths; snapshots stream over gRPC.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import grpc
import structlog

from .. import hop_trace
from ..core import Message, MessageType
from ..core.witness import META_ONLY
from ..proto.stubs import raft_pb2 as pb
from ..proto.stubs import raft_pb2_grpc as pb_grpc
from ..tls import KEEPALIVE_OPTIONS, PeerAuth, PeerIdentity, PeerRefusal, TlsFiles, aio_channel
from .codec import from_proto, to_proto
from .events import NoEvents, TransportEvents
from .inbox import Inbox
from .snapshot_stream import SNAPSHOT_STREAM_CHUNK, InstallHook, SnapshotSender, SnapshotStore, receive

log = structlog.get_logger("raftkv.transport")

PEER_MAX_MESSAGE = 256 << 20
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", PEER_MAX_MESSAGE),
    ("grpc.max_receive_message_length", PEER_MAX_MESSAGE),
    *KEEPALIVE_OPTIONS,
]


def server_options(receive_limit: int) -> list[tuple[str, int]]:
    """The gRPC server's options: CHANNEL_OPTIONS, but reading at most `receive_limit` bytes per message.
    gRPC applies the limit per server, to clients and peers alike, so a client's oversized request is
    refused before it is buffered whole; peers keep their batches under it (`max_batch_bytes`)."""
    return [(k, receive_limit if k == "grpc.max_receive_message_length" else v) for k, v in CHANNEL_OPTIONS
            ] + SERVER_PING_OPTIONS


SERVER_PING_OPTIONS = [
    # Peers' channels ping every keepalive_time_ms (10 s), with or without calls. A server that allows
    # less (gRPC's default: one ping per 5 minutes without data, two strikes) answers with a
    # too_many_pings GOAWAY, which breaks the peer stream.
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
]
MAX_BATCH = 512
CONNECT_TIMEOUT = 5.0
"""Seconds a peer connection (gRPC channel or TCP frames, TLS handshake included) may take to open before
the attempt counts as failed."""
SNAPSHOT_CHUNK = 4 << 20
"""Snapshot data larger than this travels as chunks, one per batch."""
REFUSALS = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNAUTHENTICATED)
"""How a peer refuses a stream (as opposed to being unreachable)."""
REPEAT_LOG_SECONDS = 60.0
"""The same refusal is logged again only after this long (senders reconnect every second or so)."""


class PeerGate(Protocol):
    """The host's side of peer identity: what goes in each batch, and whether a batch may come in."""

    def outgoing(self, to: int) -> tuple[bytes, bytes]:
        """(our incarnation, the incarnation we have on record for `to`)."""
        ...

    def check(self, batch: pb.MessageBatch, peer: PeerIdentity | None) -> PeerRefusal | None:
        """None if `batch` may be delivered; `peer` is the connection's certificate when peers are
        authenticated."""
        ...

    def refused_by(self, peer_id: int, code: grpc.StatusCode, reason: str) -> None:
        """A peer refused our stream."""
        ...


class OpenGate:
    """A gate that checks nothing beyond the cluster id (for tools and tests that need no identity)."""

    def outgoing(self, to: int) -> tuple[bytes, bytes]:
        return b"", b""

    def check(self, batch: pb.MessageBatch, peer: PeerIdentity | None) -> PeerRefusal | None:
        return None

    def refused_by(self, peer_id: int, code: grpc.StatusCode, reason: str) -> None:
        return None


class _OnceLog:
    """Logs a message the first time, and again only after REPEAT_LOG_SECONDS."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def due(self, key: str) -> bool:
        now = asyncio.get_running_loop().time()
        last = self._last.get(key)
        if last is not None and now - last < REPEAT_LOG_SECONDS:
            return False
        if len(self._last) > 1024:
            self._last.clear()
        self._last[key] = now
        return True


def entry_bytes(m: Message) -> int:
    """The bytes of entry data a message carries (what a follower's queue is bounded by)."""
    return sum(len(e.data) for e in m.entries) if m.entries else 0


class _Peer:
    def __init__(self, owner: Transport, node_id: int, address: str) -> None:
        self.owner = owner
        self.id = node_id
        self.address = address
        self.queue: deque[Message] = deque()
        self.queued_bytes = 0
        """Entry bytes in `queue` (appends' data), bounded by the transport's `queue_bytes_limit`."""
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.connected = False
        self.peer_address = ""
        """The peer's TCP peer port (tcp_peer.TcpPeer); "" for a gRPC stream."""

    def push(self, m: Message) -> bool:
        """Queue `m`, or refuse it (False) when the queue holds `queue_limit` messages or its entries
        would pass `queue_bytes_limit` bytes: the follower is then reported unreachable, the leader
        probes it instead of streaming, and it catches up from the log once it answers again. Memory
        queued per follower stays bounded whatever the offered load. (A message alone over the byte
        bound still goes when the queue is empty, so a maximal entry is never stuck.)"""
        if len(self.queue) >= self.owner.queue_limit:
            return False
        size = entry_bytes(m)
        if size and self.queue and self.queued_bytes + size > self.owner.queue_bytes_limit:
            return False
        self.queue.append(m)
        self.queued_bytes += size
        self.ready.set()
        return True

    def pop(self) -> Message:
        m = self.queue.popleft()
        self.queued_bytes -= entry_bytes(m)
        return m

    def clear(self) -> None:
        self.queue.clear()
        self.queued_bytes = 0

    def _batch(self, msgs: list[pb.RaftMessage], chunk: bytes = b"") -> pb.MessageBatch:
        batch = self.owner.head_batch(self.id, msgs)
        if chunk:
            batch.snapshot_chunk = chunk
        return batch

    async def _batches(self) -> AsyncIterator[pb.MessageBatch]:
        chunk_size = self.owner.snapshot_chunk
        while True:
            if not self.queue:
                self.ready.clear()
                await self.ready.wait()
            msgs: list[pb.RaftMessage] = []
            batch_bytes = 0
            while self.queue and len(msgs) < MAX_BATCH:
                m = self.pop()
                size = len(m.snapshot.data) if m.snapshot is not None else 0
                if size <= chunk_size:
                    p = to_proto(m)
                    # Bounded in bytes too: the receiver's gRPC port reads at most its receive limit per
                    # batch (shared with clients). A message alone over the budget still goes, alone.
                    nbytes = p.ByteSize()
                    if msgs and batch_bytes + nbytes > self.owner.max_batch_bytes:
                        yield self._batch(msgs)
                        msgs, batch_bytes = [], 0
                    msgs.append(p)
                    batch_bytes += nbytes
                    continue
                # A big snapshot: what came before it goes first, then its data a chunk per batch, then
                # the message itself with the last chunk. The stream keeps them in order.
                if msgs:
                    yield self._batch(msgs)
                    msgs, batch_bytes = [], 0
                data = memoryview(m.snapshot.data)
                tail = size - (size - 1) // chunk_size * chunk_size
                for off in range(0, size - tail, chunk_size):
                    yield self._batch([], bytes(data[off:off + chunk_size]))
                yield self._batch([to_proto(m, snapshot_tail=tail)])
            if msgs:
                if hop_trace.ON:
                    hop_trace.mark(f"peer.write.{self.id}")
                yield self._batch(msgs)

    async def run(self) -> None:
        backoff = 0.05
        while not self.owner.stopping:
            channel = aio_channel(self.address, self.owner.tls, CHANNEL_OPTIONS)
            try:
                # Not connected (refused, unreachable): what queued meanwhile counts as failed (broken).
                if await asyncio.wait_for(_connect(channel), CONNECT_TIMEOUT):
                    await pb_grpc.RaftStub(channel).Send(self._batches())
            except asyncio.CancelledError:
                await channel.close(grace=None)
                raise
            except grpc.aio.AioRpcError as e:
                self.refused(e.code(), e.details() or e.code().name)
            except Exception as e:  # keep the sender alive whatever the channel throws
                log.debug("peer stream error", peer=self.id, error=repr(e))
            finally:
                await channel.close(grace=None)
            if self.owner.stopping:
                return
            backoff = await self.broken(backoff)

    def refused(self, code: grpc.StatusCode, reason: str) -> None:
        """The peer refused our stream (`code` is one of REFUSALS): logged once, told to the gate, and to
        the host when the reason is that this node is not a member."""
        if code in REFUSALS:
            if self.owner.refusal_log.due(f"out:{self.id}:{reason}"):
                log.error("peer refused our stream", peer=self.id, address=self.address,
                          code=code.name, reason=reason)
            self.owner.gate.refused_by(self.id, code, reason)
        if "not a member" in reason:
            self.owner.on_refused(self.id, reason)

    async def broken(self, backoff: float) -> float:
        """The stream broke: what was queued may be stale (Raft resends what matters), so it is dropped
        and the peer reported unreachable; then wait about `backoff` seconds. The next back-off."""
        beats = sum(1 for m in self.queue if m.type == MessageType.HEARTBEAT)
        self.owner.events.send_failed(self.id, max(1, len(self.queue)), beats)
        self.clear()
        self.owner.on_unreachable(self.id)
        await asyncio.sleep(backoff * (0.5 + random.random()))
        return min(backoff * 2, 1.0)


async def _connect(channel: grpc.aio.Channel) -> bool:
    """Connect `channel` before a stream takes messages from the queue: grpc would otherwise pull them
    into a call that cannot reach the peer, and a dead peer's heartbeats would vanish there instead of
    counting as failed sends. False as soon as the connection fails (refused, unreachable)."""
    state = channel.get_state(try_to_connect=True)
    while state != grpc.ChannelConnectivity.READY:
        if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
            return False
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)
    return True


class _RaftService(pb_grpc.RaftServicer):
    def __init__(self, owner: Transport) -> None:
        self.owner = owner

    async def _refuse(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, reason: str) -> None:
        """Fail this stream; logged once per connection (and the same reason at most once a minute)."""
        if self.owner.refusal_log.due(f"in:{reason}"):
            log.warning("refused a Raft stream", code=code.name, reason=reason, peer=context.peer())
        self.owner.refused += 1
        await context.abort(code, reason)

    async def Send(self, request_iterator: AsyncIterator[pb.MessageBatch], context: grpc.aio.ServicerContext
                   ) -> pb.SendAck:
        identity: PeerIdentity | None = None
        if self.owner.peer_auth.enabled:
            checked = self.owner.peer_auth.check(context.auth_context())
            if isinstance(checked, PeerRefusal):
                await self._refuse(context, checked.code, checked.message)
                return pb.SendAck()
            identity = checked
        chunks: list[bytes] = []  # of a snapshot still arriving on this stream
        async for batch in request_iterator:
            refusal = self.accept(batch, identity, chunks)
            if refusal is not None:
                await self._refuse(context, refusal.code, refusal.message)
                return pb.SendAck()
        return pb.SendAck()

    def accept(self, batch: pb.MessageBatch, identity: PeerIdentity | None, chunks: list[bytes]
               ) -> PeerRefusal | None:
        """Check one batch of a stream (`_check`) and deliver its messages, or say why it is refused (the
        stream then ends). `chunks`: the stream's snapshot chunks still waiting for their message. Shared
        by the gRPC stream and the TCP peer port (tcp_peer.py)."""
        if hop_trace.ON:
            hop_trace.mark(f"peer.recv.{getattr(batch, 'from')}")
        refusal = self._check(batch, identity)
        if refusal is not None:
            return refusal
        if batch.cluster_id and not self.owner.cluster_id():
            self.owner.adopt_cluster_id(batch.cluster_id)
        sender = getattr(batch, "from")
        if sender not in self.owner.peers and batch.from_address and sender != self.owner.node_id:
            self.owner.add_peer(sender, batch.from_address)
        if batch.snapshot_chunk:
            chunks.append(batch.snapshot_chunk)
        deliver = self.owner.on_message
        for m in batch.messages:
            if m.snapshot.chunked:
                deliver(from_proto(m, b"".join(chunks)))
                chunks.clear()
            else:
                deliver(from_proto(m))
        return None

    def _check(self, batch: pb.MessageBatch, identity: PeerIdentity | None) -> PeerRefusal | None:
        me = self.owner.node_id
        sender = getattr(batch, "from")
        if sender == 0 or sender == me:
            return PeerRefusal(grpc.StatusCode.PERMISSION_DENIED, f"a batch to node {me} claims to come from node "
                                                                  f"{sender}")
        for m in batch.messages:
            frm = getattr(m, "from")
            if frm != sender:
                return PeerRefusal(grpc.StatusCode.PERMISSION_DENIED,
                                   f"a message from node {frm} inside a batch from node {sender}")
            if m.to != me:
                return PeerRefusal(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"a message for node {m.to} reached node {me} (is an address reused?)")
        ours = self.owner.cluster_id()
        if batch.cluster_id and ours and batch.cluster_id != ours:
            return PeerRefusal(grpc.StatusCode.FAILED_PRECONDITION,
                               f"node {me} belongs to cluster {ours.hex()}, not {batch.cluster_id.hex()}: "
                               f"node {sender}'s data comes from another cluster")
        return self.owner.gate.check(batch, identity)

    async def InstallSnapshot(self, request_iterator: AsyncIterator[pb.SnapshotChunk],
                              context: grpc.aio.ServicerContext) -> pb.InstallSnapshotResponse:
        """A snapshot stream (snapshot_stream.py), admitted as a `Send` stream is: the connection's peer
        identity, then the head batch (sender, cluster, incarnations, membership) through `_check`."""
        identity: PeerIdentity | None = None
        if self.owner.peer_auth.enabled:
            checked = self.owner.peer_auth.check(context.auth_context())
            if isinstance(checked, PeerRefusal):
                await self._refuse(context, checked.code, checked.message)
                return pb.InstallSnapshotResponse()
            identity = checked
        first = await anext(aiter(request_iterator), None)
        head = first.head if first is not None and first.HasField("head") else None
        if head is None or len(head.messages) != 1 or head.messages[0].type != MessageType.SNAP \
                or not head.messages[0].HasField("snapshot"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a snapshot stream starts with its snapshot message")
            return pb.InstallSnapshotResponse()
        refusal = self._check(head, identity)
        if refusal is None and not head.messages:  # the gate took the snapshot for a request it must not see
            ours = self.owner.cluster_id()
            refusal = PeerRefusal(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"a snapshot stream from node {getattr(head, 'from')} carries no cluster id; node "
                                  f"{self.owner.node_id} belongs to cluster {ours.hex()}")
        if refusal is not None:
            await self._refuse(context, refusal.code, refusal.message)
            return pb.InstallSnapshotResponse()
        if head.cluster_id and not self.owner.cluster_id():
            self.owner.adopt_cluster_id(head.cluster_id)
        sender = getattr(head, "from")
        if sender not in self.owner.peers and head.from_address:
            self.owner.add_peer(sender, head.from_address)
        return await receive(self.owner, from_proto(head.messages[0]), request_iterator, context)


class Transport:
    def __init__(self, node_id: int, address: str, cluster_id: Callable[[], bytes],
                 on_message: Callable[[Message], None] | None = None,
                 on_unreachable: Callable[[int], None] | None = None,
                 adopt_cluster_id: Callable[[bytes], None] = lambda _: None,
                 queue_limit: int = 8192, tls: TlsFiles | None = None, snapshot_chunk: int = SNAPSHOT_CHUNK,
                 max_batch_bytes: int = PEER_MAX_MESSAGE // 2,
                 on_refused: Callable[[int, str], None] | None = None,
                 gate: PeerGate | None = None, peer_auth: PeerAuth | None = None,
                 snapshot_store: SnapshotStore | None = None, on_snapshot: InstallHook | None = None,
                 on_snapshot_status: Callable[[int, bool], None] | None = None,
                 snapshot_stream_chunk: int = SNAPSHOT_STREAM_CHUNK, inbox: Inbox | None = None,
                 queue_bytes_limit: int = 64 << 20) -> None:
        """What peers send goes into `inbox` (inbox.py), which the host pulls from: the transport never
        calls the host. The `on_*` hooks replace the inbox's matching part, for tools and tests that
        watch the traffic themselves.

        With `snapshot_store`, snapshot messages travel as InstallSnapshot streams of the store's records
        (snapshot_stream.py) in pieces of about `snapshot_stream_chunk` bytes (keep it under the peers'
        receive limit, as `max_batch_bytes`), received ones are staged in it and handed over with
        `on_snapshot`; without, a snapshot's data travels inline on the message stream.
        `on_snapshot_status(peer, ok)` reports each snapshot message's fate, for the core's
        `report_snapshot`."""
        self.node_id = node_id
        self.max_batch_bytes = max_batch_bytes
        """Bytes of messages per batch (at least one message per batch), under the peers' receive limit."""
        self.inbox = inbox if inbox is not None else Inbox()
        self.on_refused: Callable[[int, str], None] = on_refused or self.inbox.refused
        """Told when a peer refuses our stream because this node is not a member (it may have been removed)."""
        self.gate: PeerGate = gate or OpenGate()
        self.peer_auth = peer_auth or PeerAuth()
        self.refusal_log = _OnceLog()
        self.refused = 0
        """Streams this node has refused (for tests and metrics)."""
        self.tls = tls
        self.snapshot_chunk = snapshot_chunk
        self.address = address
        self.cluster_id = cluster_id
        self.on_message: Callable[[Message], None] = on_message or self.inbox.message
        self.on_unreachable: Callable[[int], None] = on_unreachable or self.inbox.unreachable
        self.adopt_cluster_id = adopt_cluster_id
        self.queue_limit = queue_limit
        self.queue_bytes_limit = queue_bytes_limit
        """Most entry bytes queued to one peer (see `_Peer.push`)."""
        self.peers: dict[int, _Peer] = {}
        self.peer_listen = ""
        """This node's own TCP peer port (`--peer-listen`), told to peers in every batch ("" = none)."""
        self.stopping = False
        self.dropped = 0
        self.events: TransportEvents = NoEvents()
        """Told of failed sends and of snapshot streams (the node's metrics set it)."""
        self.snapshot_store = snapshot_store
        self.on_snapshot: InstallHook | None = on_snapshot or (self.inbox.snapshot if snapshot_store is not None
                                                              else None)
        self.on_snapshot_status: Callable[[int, bool], None] = on_snapshot_status or self.inbox.snapshot_status
        self.snapshot_stream_chunk = snapshot_stream_chunk
        self.receiving = 0
        """InstallSnapshot streams being received now."""
        self.snapshots: SnapshotSender | None = (
            SnapshotSender(self, snapshot_store, CHANNEL_OPTIONS) if snapshot_store is not None else None)
        self.service = _RaftService(self)
        """The Raft service: gRPC streams and the TCP peer port (tcp_peer.py) hand it their batches."""
        self._client_ssl: ssl.SSLContext | None = None

    def servicer(self) -> pb_grpc.RaftServicer:
        return self.service

    def client_ssl(self) -> ssl.SSLContext | None:
        """What a TCP peer connection presents and trusts: the same files as the gRPC peer channels
        (`tls`), built once; None for plaintext."""
        if self._client_ssl is None and self.tls is not None and self.tls.enabled:
            self._client_ssl = self.tls.client_ssl_context()
        return self._client_ssl

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_RaftServicer_to_server(self.servicer(), server)

    def add_peer(self, node_id: int, address: str, peer_address: str = "") -> None:
        """Send to `node_id` over TCP frames to its `peer_address` when it has one (tcp_peer.py), else
        over a gRPC stream to `address`; snapshots always stream over gRPC to `address`."""
        p = self.peers.get(node_id)
        if p is not None and p.address == address and p.peer_address == peer_address:
            return
        if p is not None:
            self.remove_peer(node_id)
        if peer_address:
            from .tcp_peer import TcpPeer

            p = TcpPeer(self, node_id, address, peer_address)
        else:
            p = _Peer(self, node_id, address)
        self.peers[node_id] = p
        p.task = asyncio.get_running_loop().create_task(p.run(), name=f"raftkv-peer-{node_id}")

    def remove_peer(self, node_id: int) -> None:
        p = self.peers.pop(node_id, None)
        if p is not None and p.task is not None:
            p.task.cancel()
        if self.snapshots is not None:
            self.snapshots.cancel(node_id)

    def peer_ids(self) -> list[int]:
        return list(self.peers)

    def queued_bytes(self, node_id: int) -> int:
        """Entry bytes queued to peer `node_id` and not yet handed to its stream (0 for an unknown peer)."""
        p = self.peers.get(node_id)
        return p.queued_bytes if p is not None else 0

    def send(self, msgs: list[Message]) -> None:
        if hop_trace.ON:
            for m in msgs:
                hop_trace.mark(f"send.{m.type.name.lower()}")
        for m in msgs:
            p = self.peers.get(m.to)
            if p is None:
                if m.type == MessageType.SNAP:
                    self._snapshot_status(m.to, False)
                continue
            # A witness's snapshot is metadata only (META_ONLY): it goes inline, like any message.
            if m.type == MessageType.SNAP and self.snapshots is not None and m.context != META_ONLY:
                self.snapshots.send(m, p.address)
                continue
            if not p.push(m):
                self.dropped += 1
                self.events.send_failed(m.to, 1, 1 if m.type == MessageType.HEARTBEAT else 0)
                self.on_unreachable(m.to)
                if m.type == MessageType.SNAP:
                    self._snapshot_status(m.to, False)
            elif m.type == MessageType.SNAP:
                # Inline: handed to the stream; the follower's answer (or the heartbeat that follows)
                # tells the leader what became of it.
                self._snapshot_status(m.to, True)

    def head_batch(self, to: int, msgs: list[pb.RaftMessage]) -> pb.MessageBatch:
        """A batch to `to` carrying `msgs` with this node's identity: every batch of a peer stream, and the
        head of a snapshot stream."""
        incarnation, to_incarnation = self.gate.outgoing(to)
        return pb.MessageBatch(cluster_id=self.cluster_id(), **{"from": self.node_id}, messages=msgs,
                               from_address=self.address, incarnation=incarnation, to_incarnation=to_incarnation,
                               from_peer_address=self.peer_listen)

    def snapshot_floor(self) -> int | None:
        """The lowest index of the snapshots being streamed to peers (None: none), which compaction keeps
        the log after."""
        return self.snapshots.floor() if self.snapshots is not None else None

    def _snapshot_status(self, to: int, ok: bool) -> None:
        if self.on_snapshot_status is not None:
            self.on_snapshot_status(to, ok)

    async def stop(self) -> None:
        self.stopping = True
        if self.snapshots is not None:
            await self.snapshots.stop()
        tasks = [p.task for p in self.peers.values() if p.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.peers.clear()
