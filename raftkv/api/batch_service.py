"""KV.Batch: many independent operations in one RPC, answered in order, one result or error each.

Why: a Python gRPC server spends ~250 µs of CPU per RPC whatever the RPC carries, so per-operation RPCs
cap a node at a few thousand operations per second. A batch pays that once for all its operations and
hands them to the host together: its writes become one `propose_many` (one log append, one fsync, one
replication round) because they are queued in the same loop iteration, and its reads of one consistency
share one read round (one ReadIndex for all linearizable reads).

Semantics (see kv.proto): the operations are independent, as if issued at once by different clients.
Each one is validated, served and fails on its own; results come back in request order; writes are
proposed in request order; a read need not observe a write of the same batch. A node that is not the
leader forwards the batch's writes (and any reads it cannot serve itself) to the leader as a smaller
batch, and serves the rest locally.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from .. import hop_trace
from ..layers.acks import AckLevel, AckPolicy, AckRequest
from ..layers.admission import Admission, Overloaded
from ..proto.stubs import kv_pb2 as pb
from ..server.host import NodeHost
from ..status import error_info
from ..storage import commands
from .convert import Validator, delete_to_pb, put_to_pb
from .errors import RequestError, classify, invalid
from .forward import Forwarder
from .reads import ForwardToLeader, prepare_read
from .replies import Replies

MAX_BATCH_OPS = 10_000
WRITE_KINDS = ("put", "delete")


def op_error(e: BaseException) -> pb.BatchResult:
    err = classify(e)
    return pb.BatchResult(error=pb.OpError(code=err.code.value[0], message=str(err), reason=err.reason,
                                           metadata=err.metadata))


def rpc_error(e: grpc.aio.AioRpcError) -> pb.BatchResult:
    """A forwarded sub-batch that failed as a whole: each of its operations gets that status."""
    reason, meta = error_info(e)
    return pb.BatchResult(error=pb.OpError(code=e.code().value[0], message=e.details() or e.code().name,
                                           reason=reason, metadata=meta))


class BatchExecutor:
    def __init__(self, host: NodeHost, acks: AckPolicy, replies: Replies, validator: Validator, forwarder: Forwarder,
                 cluster_id: Callable[[], bytes]) -> None:
        self.host = host
        self.acks = acks
        self.replies = replies
        self.v = validator
        self.fwd = forwarder
        self.cluster_id = cluster_id

    async def run(self, request: pb.BatchRequest, context: grpc.aio.ServicerContext) -> pb.BatchResponse:
        ops = request.ops
        if len(ops) > MAX_BATCH_OPS:
            raise invalid(f"batch has {len(ops)} operations; the limit is {MAX_BATCH_OPS}")
        refused = self._refused_whole(ops)
        if refused is not None:
            return refused
        results: list[pb.BatchResult | None] = [None] * len(ops)
        # The batch's writes go into the log together: their total is bounded like one request's. Each
        # write over the limit, or past it counting those before it, fails alone (the rest is served).
        # The request as a whole is bounded by the gRPC port's receive limit.
        write_bytes = 0
        writes: list[tuple[int, str, bytes, AckRequest, bool]] = []
        reads: dict[bytes, tuple[pb.ReadOptions, list[tuple[int, str, Any]]]] = {}
        for i, op in enumerate(ops):
            kind = op.WhichOneof("op")
            try:
                if kind == "put":
                    write_bytes = self.v.batch_write_size(op.put, "put request", write_bytes)
                    cmd: commands.Command = self.v.put(op.put)
                    ack = self.v.ack(op.put.write)
                    writes.append((i, kind, commands.encode(cmd), ack, op.put.prev_kv or ack.level != AckLevel.LEADER))
                elif kind == "delete":
                    write_bytes = self.v.batch_write_size(op.delete, "delete request", write_bytes)
                    cmd = self.v.delete(op.delete)
                    writes.append((i, kind, commands.encode(cmd), self.v.ack(op.delete.write), True))
                elif kind == "get":
                    self.v.read(op.get.read)
                    key = self.v.key(op.get.key)
                    reads.setdefault(op.get.read.SerializeToString(deterministic=True),
                                     (op.get.read, []))[1].append((i, kind, key))
                elif kind == "range":
                    self.v.read(op.range.read)
                    rng = self.v.range(op.range)
                    reads.setdefault(op.range.read.SerializeToString(deterministic=True),
                                     (op.range.read, []))[1].append((i, kind, rng))
                else:
                    raise invalid("a batch operation must be put, delete, range or get")
            except Exception as e:  # noqa: BLE001 - this operation fails alone
                results[i] = op_error(e)
        work: list[Awaitable[None]] = []
        if writes:
            if self.host.is_leader:
                work.append(self._writes(writes, results))
            else:
                work.append(self._forward(ops, [w[0] for w in writes], results, context))
        for read_opts, items in reads.values():
            work.append(self._reads(read_opts, items, ops, results, context))
        if len(work) == 1:
            await work[0]  # the usual case: no task to wrap it in, no extra loop iteration to report it
        elif work:
            await asyncio.gather(*work)
        return pb.BatchResponse(results=results)

    def _refused_whole(self, ops: Any) -> pb.BatchResponse | None:
        """A batch of writes only, on a leader over a write watermark: every operation refused at once with
        the one OVERLOADED error, before any is validated or encoded. Under overload refusals are most of
        what a leader answers, so they must cost little: one check and one error for the whole batch."""
        if not ops or not self.host.is_leader:
            return None
        try:
            Admission.of(self.host).check_write()
        except Overloaded as e:
            if all(op.WhichOneof("op") in WRITE_KINDS for op in ops):
                return pb.BatchResponse(results=[op_error(e)] * len(ops))
        return None

    async def _writes(self, writes: list[tuple[int, str, bytes, AckRequest, bool]],
                      results: list[pb.BatchResult | None]) -> None:
        # All majority writes (the usual case): one group for the host. Otherwise each host.write queues its
        # proposal on its first step. Either way they are all queued before the host loop runs again, so they
        # go into the log together, in request order.
        outs: list[Any]
        if all(w[3].level == AckLevel.MAJORITY for w in writes):
            try:
                outs = await self.acks.write_many([w[2] for w in writes])
            except Exception as e:  # noqa: BLE001 - e.g. NotLeader: every write fails alike
                one = op_error(e)
                for w in writes:
                    results[w[0]] = one
                return
        else:
            outs = await asyncio.gather(*(self.acks.write(data, ack, needs_result=needs)
                                          for _, _, data, ack, needs in writes), return_exceptions=True)
        if hop_trace.ON:
            hop_trace.mark("api.resumed")
        for (i, kind, _, _, _), out in zip(writes, outs, strict=True):
            if isinstance(out, BaseException):
                results[i] = op_error(out)
                continue
            reply = put_to_pb(out.result) if kind == "put" else delete_to_pb(out.result)
            reply.meta.CopyFrom(self.replies.write_meta(out))
            results[i] = pb.BatchResult(**{kind: reply})

    async def _reads(self, read_opts: pb.ReadOptions, items: list[tuple[int, str, Any]], ops: Any,
                     results: list[pb.BatchResult | None], context: grpc.aio.ServicerContext) -> None:
        try:
            level, bound = self.v.read(read_opts)
            point = await prepare_read(self.host, level, bound, read_opts.session_token, self.cluster_id())
            if hop_trace.ON:
                hop_trace.mark("api.resumed")
        except ForwardToLeader:
            await self._forward(ops, [i for i, _, _ in items], results, context)
            return
        except Exception as e:  # noqa: BLE001 - every read of the group fails the same way
            err = op_error(e)
            for i, _, _ in items:
                results[i] = err
            return
        for i, kind, arg in items:
            try:
                if kind == "get":
                    results[i] = pb.BatchResult(get=self.replies.get(arg, point))
                else:
                    results[i] = pb.BatchResult(range=await self.replies.range(arg, point))
            except Exception as e:  # noqa: BLE001
                results[i] = op_error(e)

    async def _forward(self, ops: Any, idxs: list[int], results: list[pb.BatchResult | None],
                       context: grpc.aio.ServicerContext) -> None:
        """Send the operations at `idxs` to the leader as one batch and take its answers in their places."""
        sub = pb.BatchRequest(ops=[ops[i] for i in idxs])
        try:
            reply = await self.fwd.call("KV", "Batch", sub, context)
        except grpc.aio.AioRpcError as e:
            err = rpc_error(e)
            for i in idxs:
                results[i] = err
            return
        except Exception as e:  # noqa: BLE001 - e.g. NOT_LEADER when no leader is known
            err = op_error(e)
            for i in idxs:
                results[i] = err
            return
        if len(reply.results) != len(idxs):
            err = op_error(RequestError(grpc.StatusCode.INTERNAL,
                                        f"the leader answered {len(reply.results)} of {len(idxs)} operations"))
            for i in idxs:
                results[i] = err
            return
        for i, r in zip(idxs, reply.results, strict=True):
            results[i] = r
