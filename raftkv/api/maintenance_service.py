"""The Maintenance service (proto/raftkv/v1/maintenance.proto): backups streamed from any member, and
the divergence check with its CORRUPT alarm (server/corruption.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import grpc
import structlog

from ..backup_file import BackupHeader, BackupWriter
from ..proto import maintenance_pb2 as mpb
from ..proto import maintenance_pb2_grpc
from ..server.corruption import HashUnavailable, MemberHash
from ..server.host import NodeHost
from .errors import RequestError, _status, classify, rpc
from .forward import FORWARDED, Forwarder, was_forwarded

log = structlog.get_logger("raftkv.api")

BACKUP_PIECE_BYTES = 512 << 10
"""Records per streamed piece: well under gRPC's default 4 MiB message limit on the client."""


class BackupSource(Protocol):
    """What a backup needs of the node's store (LmdbNodeStore has it)."""

    cluster_id: bytes

    def open_snapshot_reader(self, chunk_bytes: int) -> Any: ...

    def db_size(self) -> int: ...


class MaintenanceService(maintenance_pb2_grpc.MaintenanceServicer):
    def __init__(self, host: NodeHost, store: BackupSource, forwarder: Forwarder) -> None:
        self.host = host
        self.store = store
        self.fwd = forwarder
        if host.corruption is not None:
            host.corruption.comparer = self._member_hashes

    # ------------------------------------------------------------------------------------------------ backup
    async def SnapshotSave(self, request: mpb.SnapshotSaveRequest, context: grpc.aio.ServicerContext
                           ) -> AsyncIterator[mpb.SnapshotSaveChunk]:
        """The backup file's bytes. The records come from one LMDB read transaction, read and encoded on a
        thread of the stream's own, so the node's loop never waits for it and writes go on meanwhile."""
        h = self.host
        if h.removal.removed:
            err = classify(h.removal.error())
            await context.abort_with_status(_status(err.code, str(err), err.reason, err.metadata))
        try:
            async for data, revision, size in backup_stream(h, self.store, context.peer()):
                yield mpb.SnapshotSaveChunk(data=data, revision=revision, size_estimate=size)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as e:  # noqa: BLE001 - every failure must become a status
            err = classify(e)
            await context.abort_with_status(_status(err.code, str(err), err.reason, err.metadata))

    # ------------------------------------------------------------------------------------------------ hashes
    def _corruption(self) -> Any:
        checker = getattr(self.host, "corruption", None)
        if checker is None:
            raise RequestError(grpc.StatusCode.UNIMPLEMENTED, "this node has no divergence checker", "UNIMPLEMENTED")
        return checker

    async def _to_leader(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        h = self.host
        if was_forwarded(context) or not h.leader_id or not h.leader_address():
            raise h.not_leader()
        stub = maintenance_pb2_grpc.MaintenanceStub(self.fwd._channel(h.leader_address()))
        return await getattr(stub, method)(request, timeout=context.time_remaining(),
                                           metadata=((FORWARDED, str(h.cfg.id)),))

    @rpc
    async def HashKV(self, request: mpb.HashKVRequest, context: grpc.aio.ServicerContext) -> mpb.HashKVResponse:
        if not self.host.is_leader:
            return await self._to_leader("HashKV", request, context)
        mine = await self._corruption().hash_now()
        return mpb.HashKVResponse(revision=mine.revision, hash=mine.digest, keys=mine.keys, member_id=self.host.cfg.id)

    @rpc
    async def HashAt(self, request: mpb.HashAtRequest, context: grpc.aio.ServicerContext) -> mpb.HashAtResponse:
        wait = min(context.time_remaining() or 5.0, 30.0)
        try:
            got = await self._corruption().hash_at(request.revision, wait)
        except HashUnavailable as e:
            raise RequestError(grpc.StatusCode.NOT_FOUND, str(e), "HASH_UNAVAILABLE") from None
        return mpb.HashAtResponse(member_id=self.host.cfg.id, revision=got.revision, hash=got.digest, keys=got.keys)

    async def _member_hashes(self, revision: int, timeout: float) -> list[MemberHash]:
        """Every other member's hash at `revision`, asked over gRPC at once (the checker compares them)."""
        h = self.host
        info = h.member_info()
        conf = h.node.conf
        others = sorted(n for n in conf.members() - conf.witnesses if n != h.cfg.id)  # a witness holds no state

        async def ask(nid: int) -> MemberHash:
            address = info[nid].address if nid in info else ""
            out = MemberHash(nid, address)
            if not address:
                out.error = "no address known"
                return out
            stub = maintenance_pb2_grpc.MaintenanceStub(self.fwd._channel(address))
            try:
                r = await stub.HashAt(mpb.HashAtRequest(revision=revision), timeout=timeout)
            except grpc.aio.AioRpcError as e:
                out.error = f"{e.code().name}: {e.details()}"
                return out
            out.digest, out.keys = r.hash, r.keys
            return out

        return list(await asyncio.gather(*(ask(n) for n in others)))

    @rpc
    async def CheckHash(self, request: mpb.CheckHashRequest, context: grpc.aio.ServicerContext
                        ) -> mpb.CheckHashResponse:
        if not self.host.is_leader:
            return await self._to_leader("CheckHash", request, context)
        report = await self._corruption().check(min(context.time_remaining() or 10.0, 30.0))
        return mpb.CheckHashResponse(
            revision=report.revision, leader_id=self.host.cfg.id, corrupt=report.corrupt,
            members=[mpb.MemberHash(member_id=m.member_id, address=m.address, hash=m.digest, keys=m.keys,
                                    error=m.error, matches=m.matches) for m in report.members])

    @rpc
    async def AlarmList(self, request: mpb.AlarmListRequest, context: grpc.aio.ServicerContext
                        ) -> mpb.AlarmListResponse:
        return self._alarms()

    @rpc
    async def AlarmDisarm(self, request: mpb.AlarmDisarmRequest, context: grpc.aio.ServicerContext
                          ) -> mpb.AlarmListResponse:
        kind = request.type.upper()
        if kind not in ("CORRUPT", ""):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"alarm type {request.type!r} cannot be disarmed by hand (CORRUPT can; NOSPACE "
                               "clears itself once the node has space)", "INVALID_ARGUMENT")
        if not self.host.is_leader:
            return await self._to_leader("AlarmDisarm", request, context)
        await self._corruption().disarm(request.member_id)
        return self._alarms()

    def _alarms(self) -> mpb.AlarmListResponse:
        h = self.host
        out = [mpb.Alarm(type="NOSPACE", member_id=h.cfg.id, message=h.nospace_message())] if h.nospace else []
        checker = getattr(h, "corruption", None)
        if checker is not None:
            out += [mpb.Alarm(type="CORRUPT", member_id=a.member, message=a.message, revision=a.revision)
                    for a in checker.alarms()]
        return mpb.AlarmListResponse(alarms=out)


async def backup_stream(h: NodeHost, store: BackupSource, peer: str, etcd_size: bool = False
                        ) -> AsyncIterator[tuple[bytes, int, int]]:
    """The backup file's bytes, piece by piece, with the revision and size estimate on the first (0 on the
    others). Shared by `kv snapshot save` and etcd's Maintenance.Snapshot (`etcd_size`: the end frame padded
    as backup_file.py says), so both write the same snapshot in the same format."""
    pool = ThreadPoolExecutor(1, thread_name_prefix=f"raftkv-backup-{h.cfg.id}")
    loop = asyncio.get_running_loop()
    reader = None
    try:
        await h.flush_now()
        reader = await loop.run_in_executor(pool, store.open_snapshot_reader, BACKUP_PIECE_BYTES)
        meta = reader.meta
        writer = BackupWriter()
        header = BackupHeader(meta.index, meta.term, store.cluster_id, sorted(meta.conf.voters),
                              sorted(meta.conf.learners), list(_snapshot_dbs()), h.cfg.id, time.time())
        log.info("backup started", revision=meta.index, peer=peer)
        yield writer.header(header), meta.index, store.db_size()
        while True:
            before = reader.count
            piece = await loop.run_in_executor(pool, reader.next_piece)
            if piece is None:
                break
            yield writer.piece(piece.data, piece.crc, reader.count - before), 0, 0
        yield writer.end(etcd_size), 0, 0
        log.info("backup sent", revision=meta.index, records=writer.records, pieces=writer.pieces)
    finally:
        if reader is not None:
            pool.submit(reader.close)
        pool.shutdown(wait=False)


def _snapshot_dbs() -> tuple[bytes, ...]:
    """The sub-databases a snapshot reader walks, in its order (storage/snapshots.py SNAPSHOT_DBS), as
    the api may not import storage internals: the host's store names them."""
    from ..server.restore import BACKUP_DBS

    return BACKUP_DBS


def add_to_server(server: grpc.aio.Server, host: NodeHost, store: BackupSource, forwarder: Forwarder) -> str:
    """Register the service; returns its full name (for reflection)."""
    maintenance_pb2_grpc.add_MaintenanceServicer_to_server(MaintenanceService(host, store, forwarder), server)
    return mpb.DESCRIPTOR.services_by_name["Maintenance"].full_name


__all__ = ["MaintenanceService", "RequestError", "add_to_server", "backup_stream"]
