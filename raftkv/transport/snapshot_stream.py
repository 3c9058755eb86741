"""Snapshots between peers, streamed on an `InstallSnapshot` call of their own.

The core's snapshot message carries only metadata. On the leader, `SnapshotSender` turns it into a stream:
a thread of its own walks one LMDB read transaction (the store's `SnapshotReader`) and hands out pieces of
about a MiB, one ahead of the one on the wire, on a channel of its own; HTTP/2 flow control paces the
reading to what the follower takes, so memory holds a few pieces whatever the data size, and neither the
event loop nor the peer's message stream (heartbeats, appends) waits for it. The follower's answer, sent
once it has installed the snapshot, is what the leader's core is told (`report_snapshot`): success only
then; a broken stream, a refusal or a deadline is reported as a failure after a back-off, and the core
sends a new snapshot message, so the stream is retried from the start.

On the follower, `receive` stages the pieces as they come (the store's `SnapshotStage`, off the loop, a
transaction per piece), refuses a corrupt piece (DATA_LOSS, logged), checks the count and SHA-256 at the
end, and only then hands the core the snapshot message, its data a token naming the stage; the host
installs it in the Ready's transaction and answers. A stream that ends early leaves the live state as it
was."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

import grpc
import structlog

from ..core import Message, Snapshot, SnapshotMeta
from ..proto.stubs import raft_pb2 as pb
from ..proto.stubs import raft_pb2_grpc as pb_grpc
from ..tls import aio_channel
from .codec import to_proto

if TYPE_CHECKING:
    from .transport import Transport

log = structlog.get_logger("raftkv.transport")

SNAPSHOT_STREAM_CHUNK = 1 << 20
"""Bytes of records per piece of a snapshot stream."""
STREAM_DEADLINE_S = 600.0
INSTALL_WAIT_S = 300.0
"""How long a receiver waits for its host to install a complete snapshot before answering."""
RETRY_MIN_S, RETRY_MAX_S = 0.5, 10.0
MAX_RECEIVING = 2
"""Snapshot streams a node accepts at once (two leaders of successive terms may each send one)."""


class SnapshotPieces(Protocol):
    meta: SnapshotMeta
    count: int

    def next_piece(self) -> Any: ...

    def digest(self) -> bytes: ...

    def close(self) -> None: ...


class SnapshotStage(Protocol):
    def add(self, data: bytes, crc: int) -> None: ...

    def finish(self, records: int, sha256: bytes) -> bytes: ...

    def abort(self) -> None: ...


class SnapshotStore(Protocol):
    """What the transport needs from the node's store (given by the process that wires them)."""

    def open_snapshot_reader(self, chunk_bytes: int) -> SnapshotPieces: ...

    def stage_snapshot(self, meta: SnapshotMeta) -> SnapshotStage: ...

    def discard_staged(self, token: bytes) -> None: ...


InstallHook = Callable[[Message], Awaitable[bool]]
"""Hands the core a snapshot message whose data is staged; resolves True once installed, False when the
core did not need it."""


class SnapshotSender:
    """At most one outgoing snapshot stream per peer."""

    def __init__(self, owner: Transport, store: SnapshotStore, channel_options: list[tuple[str, Any]]) -> None:
        self.owner = owner
        self.store = store
        self.channel_options = channel_options
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._failures: dict[int, int] = {}
        self._indexes: dict[int, int] = {}  # peer -> index of the snapshot being streamed to it

    def send(self, m: Message, address: str) -> None:
        task = self._tasks.get(m.to)
        if task is not None and not task.done():
            return  # the stream under way reports for this message too
        self._tasks[m.to] = asyncio.get_running_loop().create_task(self._run(m, address),
                                                                   name=f"raftkv-snapshot-to-{m.to}")

    def floor(self) -> int | None:
        """The lowest index of the snapshots being streamed: the log must keep the entries after it, or the
        follower that installs it will need another snapshot straight away."""
        return min(self._indexes.values(), default=None)

    def cancel(self, node_id: int) -> None:
        task = self._tasks.pop(node_id, None)
        if task is not None:
            task.cancel()

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _report(self, to: int, ok: bool) -> None:
        if self.owner.on_snapshot_status is not None:
            self.owner.on_snapshot_status(to, ok)

    async def _run(self, m: Message, address: str) -> None:
        assert m.snapshot is not None
        self._indexes[m.to] = m.snapshot.meta.index
        started = time.monotonic()
        try:
            await self._stream(m, address)
        except asyncio.CancelledError:
            self.owner.events.snapshot_sent(m.to, False, time.monotonic() - started)
            if not self.owner.stopping:
                self._report(m.to, False)
            raise
        except Exception as e:  # noqa: BLE001 - any failure is reported to the core, which retries
            self.owner.events.snapshot_sent(m.to, False, time.monotonic() - started)
            failures = self._failures[m.to] = self._failures.get(m.to, 0) + 1
            delay = min(RETRY_MAX_S, RETRY_MIN_S * 2 ** (failures - 1))
            remote = isinstance(e, grpc.aio.AioRpcError)
            detail = e.details() if remote else str(e)
            code = e.code().name if remote else type(e).__name__
            # A refusal or a broken link is the follower's or the network's; anything else (a record that
            # fails its checksum here) is this node's, and an operator's business.
            (log.warning if remote else log.error)("snapshot send failed; retrying", peer=m.to, code=code,
                                                   error=detail, retry_in_seconds=delay)
            self._indexes.pop(m.to, None)
            await asyncio.sleep(delay)
            self._report(m.to, False)
        else:
            self.owner.events.snapshot_sent(m.to, True, time.monotonic() - started)
            self._failures.pop(m.to, None)
            self._report(m.to, True)
        finally:
            self._indexes.pop(m.to, None)

    async def _stream(self, m: Message, address: str) -> None:
        loop = asyncio.get_running_loop()
        # One thread per stream: an LMDB read transaction is used by one thread at a time.
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"raftkv-snapshot-to-{m.to}")
        reader: SnapshotPieces | None = None
        channel = aio_channel(address, self.owner.tls, self.channel_options)
        started = time.monotonic()
        sent = 0
        try:
            reader = pieces = await loop.run_in_executor(pool, self.store.open_snapshot_reader,
                                                         self.owner.snapshot_stream_chunk)
            head = dataclasses.replace(m, snapshot=Snapshot(pieces.meta))
            self._indexes[m.to] = pieces.meta.index
            log.info("sending snapshot", peer=m.to, index=pieces.meta.index, term=pieces.meta.term)

            async def chunks() -> AsyncIterator[pb.SnapshotChunk]:
                nonlocal sent
                yield pb.SnapshotChunk(head=self.owner.head_batch(m.to, [to_proto(head)]))
                ahead = loop.run_in_executor(pool, pieces.next_piece)
                while (piece := await ahead) is not None:
                    ahead = loop.run_in_executor(pool, pieces.next_piece)  # read the next while this one goes
                    sent += len(piece.data)
                    yield pb.SnapshotChunk(data=piece.data, crc=piece.crc)
                yield pb.SnapshotChunk(last=True, records=pieces.count, sha256=pieces.digest())

            stub = pb_grpc.RaftStub(channel)
            resp = await stub.InstallSnapshot(chunks(), timeout=STREAM_DEADLINE_S)
            log.info("snapshot sent", peer=m.to, index=pieces.meta.index, records=pieces.count,
                     mib=round(sent / 2**20, 1), seconds=round(time.monotonic() - started, 2),
                     installed=resp.installed)
        finally:
            if reader is not None:
                pool.submit(reader.close)
            pool.shutdown(wait=False)
            await channel.close(grace=None)


async def receive(owner: Transport, msg: Message, request_iterator: AsyncIterator[pb.SnapshotChunk],
                  context: grpc.aio.ServicerContext) -> pb.InstallSnapshotResponse:
    """The follower's side of InstallSnapshot (see the module docstring), once the transport has admitted
    the stream's head: `msg`, the snapshot message, from a peer of this cluster."""
    store, install = owner.snapshot_store, owner.on_snapshot
    if store is None or install is None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"node {owner.node_id} takes no snapshot streams")
    assert store is not None and install is not None and msg.snapshot is not None
    if owner.receiving >= MAX_RECEIVING:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"node {owner.node_id} is receiving {owner.receiving} snapshots already")
    owner.receiving += 1
    started, ok = time.monotonic(), False
    try:
        meta = msg.snapshot.meta
        token = await _stage(owner, store, meta, msg.frm, request_iterator, context)
        # Complete: from here on the token, and whoever holds it, own the stage.
        outcome = asyncio.ensure_future(install(dataclasses.replace(msg, snapshot=Snapshot(meta, token))))

        def not_needed(f: asyncio.Future[bool]) -> None:
            if f.cancelled() or f.exception() is not None or not f.result():
                store.discard_staged(token)

        outcome.add_done_callback(not_needed)
        try:
            installed = await asyncio.wait_for(asyncio.shield(outcome), INSTALL_WAIT_S)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"node {owner.node_id} has not installed the snapshot at index {meta.index} yet")
        ok = True
        return pb.InstallSnapshotResponse(installed=installed)
    finally:
        owner.receiving -= 1
        owner.events.snapshot_received(msg.frm, ok, time.monotonic() - started)


async def _stage(owner: Transport, store: SnapshotStore, meta: SnapshotMeta, sender: int,
                 request_iterator: AsyncIterator[pb.SnapshotChunk], context: grpc.aio.ServicerContext) -> bytes:
    """Write the pieces to a stage as they come (off the loop), verified; returns the token of the
    complete stage. Any other end gives the stage up and fails the call."""
    started = time.monotonic()
    stage: SnapshotStage | None = None
    token = b""
    try:
        stage = await asyncio.to_thread(store.stage_snapshot, meta)
        async for chunk in request_iterator:
            if chunk.data:
                await asyncio.to_thread(stage.add, chunk.data, chunk.crc)
            if chunk.last:
                token = await asyncio.to_thread(stage.finish, chunk.records, chunk.sha256)
                break
    except ValueError as e:  # the store's SnapshotStreamError
        log.error("snapshot refused: corrupt stream", leader=sender, index=meta.index, error=str(e))
        await context.abort(grpc.StatusCode.DATA_LOSS, f"node {owner.node_id} refused the snapshot: {e}")
    except OSError as e:  # busy with another, or a full or failing disk: the leader retries later
        (log.warning if e.errno == errno.EBUSY else log.error)(
            "snapshot cannot be staged", leader=sender, index=meta.index, error=str(e))
        await context.abort(grpc.StatusCode.UNAVAILABLE,
                            f"node {owner.node_id} cannot stage the snapshot: {e.strerror or e}")
    finally:
        if not token and stage is not None:
            stage.abort()
    if not token:
        log.warning("snapshot stream ended before its last piece; nothing installed", leader=sender,
                    index=meta.index)
        await context.abort(grpc.StatusCode.ABORTED, "the snapshot stream ended early")
    log.info("snapshot received", leader=sender, index=meta.index, term=meta.term,
             seconds=round(time.monotonic() - started, 2))
    return token
