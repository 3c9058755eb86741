"""The KV service: Put, Get, Range, Delete, Txn, each with its ack level or read consistency."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from ..layers.acks import AckLevel, AckPolicy, WriteOutcome
from ..layers.reads import ReadLevel
from ..proto.stubs import kv_pb2 as pb
from ..proto.stubs import kv_pb2_grpc
from ..server.host import NodeHost
from ..storage import commands
from ..storage.commands import Range
from .batch_service import BatchExecutor
from .convert import Validator, delete_to_pb, op_result_to_pb, put_to_pb
from .errors import invalid, rpc
from .forward import Forwarder
from .reads import ForwardToLeader, ReadPoint, prepare_read
from .replies import Replies
from .session_service import SessionService


class KVService(kv_pb2_grpc.KVServicer):
    def __init__(self, host: NodeHost, cluster_id: Callable[[], bytes], forwarder: Forwarder, acks: AckPolicy | None = None) -> None:
        self.host = host
        self.cluster_id = cluster_id
        self.fwd = forwarder
        self.v = Validator(host.cfg)
        self.acks = acks or AckPolicy(host)
        self.replies = Replies(host, cluster_id)
        self.sessions = SessionService(host, self.acks)
        """The Sessions service (exactly-once writes), over the same ack policy."""
        self.batch = BatchExecutor(host, self.acks, self.replies, self.v, forwarder, cluster_id)

    def close(self) -> None:
        """Wait for running scans before the store closes under them."""
        self.replies.close()

    async def _write(self, method: str, request: object, context: grpc.aio.ServicerContext,
                     cmd: commands.Command, write: pb.WriteOptions, needs_result: bool) -> WriteOutcome | object:
        if not self.host.is_leader:
            return await self.fwd.call("KV", method, request, context)
        ack = self.v.ack(write)
        if write.client_session:  # exactly-once: a retried (session, sequence) gets its first result back
            if not write.sequence:
                raise invalid("a write in a client session needs its sequence number (>= 1)")
            numbered = commands.SessionWrite(write.client_session, write.sequence, cmd)
            return await self.acks.write(commands.encode(numbered), ack, needs_result=True)
        return await self.acks.write(commands.encode(cmd), ack, needs_result=needs_result or ack.level != AckLevel.LEADER)

    async def _read(self, method: str, request: object, context: grpc.aio.ServicerContext,
                    read: pb.ReadOptions) -> ReadPoint | object:
        level, bound = self.v.read(read)
        try:
            return await prepare_read(self.host, level, bound, read.session_token, self.cluster_id())
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
        reply.meta.CopyFrom(self.replies.write_meta(out))
        return reply

    @rpc
    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        self.v.request_size(request)
        cmd = self.v.delete(request)
        out = await self._write("Delete", request, context, cmd, request.write, True)
        if not isinstance(out, WriteOutcome):
            return out
        reply = delete_to_pb(out.result)
        reply.meta.CopyFrom(self.replies.write_meta(out))
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
        reply.meta.CopyFrom(self.replies.write_meta(out))
        return reply

    @rpc
    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.GetResponse:
        key = self.v.key(request.key)
        point = await self._read("Get", request, context, request.read)
        if not isinstance(point, ReadPoint):
            return point
        return self.replies.get(key, point)

    @rpc
    async def Range(self, request: pb.RangeRequest, context: grpc.aio.ServicerContext) -> pb.RangeResponse:
        op: Range = self.v.range(request)
        point = await self._read("Range", request, context, request.read)
        if not isinstance(point, ReadPoint):
            return point
        return await self.replies.range(op, point)

    @rpc
    async def Batch(self, request: pb.BatchRequest, context: grpc.aio.ServicerContext) -> pb.BatchResponse:
        return await self.batch.run(request, context)


__all__ = ["KVService", "ReadLevel"]
