"""The KV service: Put, Get, Range, Delete, Txn, each with its ack level or read consistency."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import grpc

from ..layers.acks import AckLevel
from ..layers.reads import ReadLevel
from ..layers.session import SessionToken
from ..proto.stubs import kv_pb2 as pb
from ..proto.stubs import kv_pb2_grpc
from ..server.host import NodeHost, WriteOutcome
from ..storage import LmdbNodeStore, commands
from ..storage.commands import Range
from .batch_service import BatchExecutor
from .convert import (
    ACK_TO_PB,
    READ_TO_PB,
    Validator,
    delete_to_pb,
    kv_to_pb,
    op_result_to_pb,
    put_to_pb,
    range_to_pb,
)
from .errors import rpc
from .forward import Forwarder
from .reads import ForwardToLeader, ReadPoint, prepare_read

RANGE_THREADS = 2
"""Range scans run on this many threads, never on the event loop: a scan of many keys (counting every
match, as etcd does) would stall the host loop and its heartbeats. More ranges at once wait their turn."""


class KVService(kv_pb2_grpc.KVServicer):
    def __init__(self, host: NodeHost, store: LmdbNodeStore, forwarder: Forwarder) -> None:
        self.host = host
        self.store = store
        self.fwd = forwarder
        self.v = Validator(host.cfg)
        self.batch = BatchExecutor(self)
        self._term_at = (-1, 0)
        self._scans = ThreadPoolExecutor(max_workers=RANGE_THREADS, thread_name_prefix=f"raftkv-range-{host.cfg.id}")

    def close(self) -> None:
        """Wait for running scans before the store closes under them."""
        self._scans.shutdown(wait=True, cancel_futures=True)

    async def range_reply(self, op: Range) -> tuple[pb.RangeResponse, int]:
        """Scan and build the reply on a scan thread, bounded by --max-range-keys (in `op.limit`) and
        --max-range-bytes; with the applied index of the state scanned."""
        limit_bytes = self.host.cfg.max_range_bytes

        def scan() -> tuple[pb.RangeResponse, int]:
            result, applied = self.store.range_at(op, limit_bytes)
            return range_to_pb(result), applied

        return await asyncio.get_running_loop().run_in_executor(self._scans, scan)

    # -- helpers -----------------------------------------------------------------------------
    def _token(self, index: int, term: int | None = None) -> bytes:
        """A session token names an entry: its index and the term of the entry there (checked by the node
        that serves the token, see `check_token_term`)."""
        if term is None:
            cached_index, term = self._term_at
            if cached_index != index:  # reads between writes share one applied index: one log lookup
                term = self.host.node.raft_log.term_or_zero(index)
                self._term_at = (index, term)
        return SessionToken(index=index, term=term).encode(self.store.cluster_id)

    def _write_meta(self, out: WriteOutcome) -> pb.WriteMeta:
        return pb.WriteMeta(index=out.index, term=out.term, ack_achieved=ACK_TO_PB[out.ack.level],
                            degraded=out.ack.degraded, confirmed_by=out.ack.confirmed_by,
                            commit_latency_us=int(out.latency_s * 1e6), session_token=self._token(out.index, out.term),
                            served_by=self.host.cfg.id, may_be_lost=out.ack.level == AckLevel.LEADER)

    def _read_meta(self, point: ReadPoint, applied: int) -> pb.ReadMeta:
        return pb.ReadMeta(served_by=self.host.cfg.id, applied_index=applied,
                           consistency_achieved=READ_TO_PB[point.level],
                           staleness_bound_ms=point.staleness_bound_ms, session_token=self._token(applied))

    async def _write(self, method: str, request: object, context: grpc.aio.ServicerContext,
                     cmd: commands.Command, write: pb.WriteOptions, needs_result: bool) -> WriteOutcome | object:
        if not self.host.is_leader:
            return await self.fwd.call("KV", method, request, context)
        ack = self.v.ack(write)
        return await self.host.write(commands.encode(cmd), ack, needs_result=needs_result or ack.level != AckLevel.LEADER)

    async def _read(self, method: str, request: object, context: grpc.aio.ServicerContext,
                    read: pb.ReadOptions) -> ReadPoint | object:
        level, bound = self.v.read(read)
        try:
            return await prepare_read(self.host, level, bound, read.session_token, self.store.cluster_id)
        except ForwardToLeader:
            return await self.fwd.call("KV", method, request, context)

    # -- RPCs ----------------------------------------------------------------------------------
    @rpc
    async def Put(self, request: pb.PutRequest, context: grpc.aio.ServicerContext) -> pb.PutResponse:
        self.v.request_size(request)
        cmd = self.v.put(request)
        out = await self._write("Put", request, context, cmd, request.write, request.prev_kv)
        if not isinstance(out, WriteOutcome):
            return out
        reply = put_to_pb(out.result)
        reply.meta.CopyFrom(self._write_meta(out))
        return reply

    @rpc
    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        self.v.request_size(request)
        cmd = self.v.delete(request)
        out = await self._write("Delete", request, context, cmd, request.write, True)
        if not isinstance(out, WriteOutcome):
            return out
        reply = delete_to_pb(out.result)
        reply.meta.CopyFrom(self._write_meta(out))
        return reply

    @rpc
    async def Txn(self, request: pb.TxnRequest, context: grpc.aio.ServicerContext) -> pb.TxnResponse:
        self.v.request_size(request)
        cmd = self.v.txn(request)
        out = await self._write("Txn", request, context, cmd, request.write, True)
        if not isinstance(out, WriteOutcome):
            return out
        res = out.result
        reply = pb.TxnResponse(succeeded=res.succeeded, responses=[op_result_to_pb(r) for r in res.results])
        reply.meta.CopyFrom(self._write_meta(out))
        return reply

    @rpc
    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.GetResponse:
        key = self.v.key(request.key)
        point = await self._read("Get", request, context, request.read)
        if not isinstance(point, ReadPoint):
            return point
        kv, applied = self.store.get_at(key)
        reply = pb.GetResponse(found=kv is not None)
        if kv is not None:
            reply.kv.CopyFrom(kv_to_pb(kv))
        reply.meta.CopyFrom(self._read_meta(point, applied))
        return reply

    @rpc
    async def Range(self, request: pb.RangeRequest, context: grpc.aio.ServicerContext) -> pb.RangeResponse:
        op: Range = self.v.range(request)
        point = await self._read("Range", request, context, request.read)
        if not isinstance(point, ReadPoint):
            return point
        reply, applied = await self.range_reply(op)
        reply.meta.CopyFrom(self._read_meta(point, applied))
        return reply

    @rpc
    async def Batch(self, request: pb.BatchRequest, context: grpc.aio.ServicerContext) -> pb.BatchResponse:
        return await self.batch.run(request, context)


__all__ = ["KVService", "ReadLevel"]
