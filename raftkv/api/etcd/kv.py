"""etcdserverpb.KV on raftkv: Range, Put, DeleteRange, Txn, Compact, through raftkv's own layers.

Writes go through `AckPolicy` (layers/acks.py) at the level `raftkv-ack` asks (default: the server's
default, majority); reads through the read policy (layers/read_path.py) at etcd's level (linearizable,
or serializable with `serializable=true`) or the one `raftkv-consistency` asks. A follower forwards
writes, and reads it cannot serve as asked, to the leader's etcd service.

History: raftkv keeps no MVCC history (only each key's latest version), so a Range at a revision is
served only at the node's current revision; an older one is "required revision has been compacted",
a newer one "required revision is a future revision", as etcd says for revisions outside what it keeps.
Compact accepts any revision up to the current one and has nothing to drop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from ...layers.acks import AckLevel, AckPolicy, WriteOutcome
from ...layers.read_path import ReadPoint
from ...proto.etcd_stubs import rpc_pb2 as epb
from ...proto.etcd_stubs import rpc_pb2_grpc as epb_grpc
from ...server.host import NodeHost
from ...storage import commands
from ...storage.commands import Compare, Put, Range, RangeResult, Txn
from ..convert import Validator
from ..forward import Forwarder
from ..reads import ForwardToLeader, prepare_read
from ..replies import Replies
from . import errors as E
from . import levels
from .base import EtcdBase
from .errors import etcd_rpc
from .translate import Translator, delete_to_etcd, put_to_etcd, range_to_etcd, txn_to_etcd

RANGE_THREADS = 2
IGNORE_VALUE_TRIES = 5
"""A put with ignore_value re-reads and retries its compare-and-put this often when the key keeps
changing under it, then answers etcd's "request timed out"."""


class EtcdKV(EtcdBase, epb_grpc.KVServicer):
    def __init__(self, host: NodeHost, cluster_id: Callable[[], bytes], forwarder: Forwarder,
                 acks: AckPolicy) -> None:
        super().__init__(host, cluster_id, forwarder)
        self.v = Validator(host.cfg)
        self.t = Translator(self.v)
        self.acks = acks
        self.tokens = Replies(host, cluster_id)  # session tokens (its scan threads stay unused)
        self._scans = ThreadPoolExecutor(max_workers=RANGE_THREADS, thread_name_prefix=f"raftkv-etcd-{host.cfg.id}")

    def close(self) -> None:
        self.tokens.close()
        self._scans.shutdown(wait=True, cancel_futures=True)

    # -- the two paths -----------------------------------------------------------------------------
    async def _write(self, cmd: commands.Command, context: grpc.aio.ServicerContext, needs_result: bool
                     ) -> WriteOutcome:
        ack = self.v.ack(levels.write_options(levels.metadata(context)))
        out = await self.acks.write(commands.encode(cmd), ack,
                                    needs_result=needs_result or ack.level != AckLevel.LEADER)
        context.set_trailing_metadata(levels.write_trailers(out, self.tokens.token(out.index, out.term),
                                                            self.host.cfg.id))
        return out

    async def _read_point(self, context: grpc.aio.ServicerContext, serializable: bool) -> ReadPoint:
        opts = levels.read_options(levels.metadata(context), serializable)
        level, bound = self.v.read(opts)
        return await prepare_read(self.host, level, bound, opts.session_token, self.cluster_id())

    async def _scan(self, op: Range) -> tuple[RangeResult, int]:
        limit_bytes = self.host.cfg.max_range_bytes
        return await asyncio.get_running_loop().run_in_executor(
            self._scans, lambda: self.host.read(lambda s: s.range_at(op, limit_bytes)))

    # -- RPCs ----------------------------------------------------------------------------------------
    @etcd_rpc
    async def Range(self, request: epb.RangeRequest, context: grpc.aio.ServicerContext) -> epb.RangeResponse:
        op = self.t.range(request)
        try:
            point = await self._read_point(context, request.serializable)
        except ForwardToLeader:
            return await self.forward("KV", "Range", request, context)
        res, applied = await self._scan(op)
        if request.revision > 0 and request.revision != applied:
            raise E.FUTURE_REV() if request.revision > applied else E.COMPACTED()
        reply = range_to_etcd(request, res)
        reply.header.CopyFrom(self.header(applied))
        context.set_trailing_metadata(levels.read_trailers(point, self.tokens.token(applied), self.host.cfg.id))
        return reply

    @etcd_rpc
    async def Put(self, request: epb.PutRequest, context: grpc.aio.ServicerContext) -> epb.PutResponse:
        self._size(request)
        if request.ignore_value or request.ignore_lease:
            return await self._put_ignoring(request, context)
        cmd = self.t.put(request)
        if not self.host.is_leader:
            return await self.forward("KV", "Put", request, context)
        out = await self._write(cmd, context, request.prev_kv)
        reply = put_to_etcd(out.result)
        reply.header.CopyFrom(self.header(out.index))
        return reply

    async def _put_ignoring(self, request: epb.PutRequest, context: grpc.aio.ServicerContext) -> epb.PutResponse:
        """ignore_value / ignore_lease: the key must exist; its value (and its lease, always none) stays.
        A compare-and-put on the key's mod revision, so a concurrent change is never overwritten with
        the value it replaced."""
        put = self.t.put(request)  # the etcd checks (value provided, lease, empty key)
        if not self.host.is_leader:
            return await self.forward("KV", "Put", request, context)
        for _ in range(IGNORE_VALUE_TRIES):
            await self.host.linearizable_barrier()
            cur, _ = await self._scan(Range(put.key))
            if not cur.kvs:
                raise E.KEY_NOT_FOUND()
            kv = cur.kvs[0]
            value = kv.value if request.ignore_value else put.value
            txn = Txn((Compare(put.key, "mod", "=", kv.mod_revision),), (Put(put.key, value, request.prev_kv),))
            out = await self._write(txn, context, True)
            if out.result.succeeded:
                reply = put_to_etcd(out.result.results[0])
                reply.header.CopyFrom(self.header(out.index))
                return reply
        raise E.TIMEOUT()

    @etcd_rpc
    async def DeleteRange(self, request: epb.DeleteRangeRequest, context: grpc.aio.ServicerContext
                          ) -> epb.DeleteRangeResponse:
        self._size(request)
        cmd = self.t.delete(request)
        if not self.host.is_leader:
            return await self.forward("KV", "DeleteRange", request, context)
        out = await self._write(cmd, context, True)
        reply = delete_to_etcd(out.result)
        reply.header.CopyFrom(self.header(out.index))
        return reply

    @etcd_rpc
    async def Txn(self, request: epb.TxnRequest, context: grpc.aio.ServicerContext) -> epb.TxnResponse:
        self._size(request)
        cmd = self.t.txn(request)
        if not self.host.is_leader:
            return await self.forward("KV", "Txn", request, context)
        out = await self._write(cmd, context, True)
        return txn_to_etcd(request, out.result, self.header(out.index))

    @etcd_rpc
    async def Compact(self, request: epb.CompactionRequest, context: grpc.aio.ServicerContext
                      ) -> epb.CompactionResponse:
        """raftkv keeps no history to compact: a revision up to the current one is accepted (there is
        nothing to drop), a later one is etcd's "future revision"."""
        if request.revision > self.host.applied:
            raise E.FUTURE_REV()
        return epb.CompactionResponse(header=self.header())

    def _size(self, request: Any) -> None:
        self.v.request_size(request)

