"""Coalescing concurrent operations into KV.Batch RPCs (asyncio).

Every operation submitted while a batch is being prepared, or while `max_inflight` batches are already
on the wire, joins the next batch; so under light load each operation goes alone (no added wait: a batch
is sent on the next loop iteration), and under heavy load batches grow until the server's per-RPC cost is
shared by hundreds of operations. Each caller gets its own operation's response, or its own error as a
typed `RaftKVError`, exactly as from the unary call.

A `Batcher` talks to one endpoint; it does not find the leader or retry (the caller decides, as for a
failed unary call: see `policy.retryable`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from ..proto.stubs import kv_pb2 as pb
from .errors import RaftKVError, error_from_status, from_rpc_error

_CODES = {c.value[0]: c for c in grpc.StatusCode}


def op_error_to_exception(e: pb.OpError) -> RaftKVError:
    return error_from_status(_CODES.get(e.code, grpc.StatusCode.UNKNOWN), e.message, e.reason, dict(e.metadata))


MAX_BATCH_BYTES = 1 << 20
"""A batch's operations together stay under this (an operation larger by itself goes alone): below the
server's default --max-request-bytes (1.5 MiB), which refuses a batch whose writes add up to more."""


class Batcher:
    def __init__(self, stub: Any, timeout: float = 5.0, max_ops: int = 1024, max_inflight: int = 2,
                 max_bytes: int = MAX_BATCH_BYTES) -> None:
        """`stub`: a `kv_pb2_grpc.KVStub` on a `grpc.aio` channel to one endpoint."""
        self.stub = stub
        self.timeout = timeout
        self.max_ops = max_ops
        self.max_bytes = max_bytes
        self.max_inflight = max_inflight
        self._pending: list[tuple[pb.BatchOp, asyncio.Future[Any]]] = []
        self._inflight = 0
        self._scheduled = False
        self.batches_sent = 0
        self.ops_sent = 0

    async def put(self, req: pb.PutRequest) -> pb.PutResponse:
        return await self.submit(pb.BatchOp(put=req))

    async def delete(self, req: pb.DeleteRequest) -> pb.DeleteResponse:
        return await self.submit(pb.BatchOp(delete=req))

    async def get(self, req: pb.GetRequest) -> pb.GetResponse:
        return await self.submit(pb.BatchOp(get=req))

    async def range(self, req: pb.RangeRequest) -> pb.RangeResponse:
        return await self.submit(pb.BatchOp(range=req))

    def submit(self, op: pb.BatchOp) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending.append((op, fut))
        if not self._scheduled and self._inflight < self.max_inflight:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending and self._inflight < self.max_inflight:
            n = self._batch_length()
            batch = self._pending[:n]
            del self._pending[:n]
            self._inflight += 1
            asyncio.ensure_future(self._send(batch))

    def _batch_length(self) -> int:
        """How many of the pending operations go in the next batch: at most `max_ops`, and no more than
        fit in `max_bytes` (at least one)."""
        total = 0
        for n, (op, _) in enumerate(self._pending[:self.max_ops]):
            total += op.ByteSize()
            if total > self.max_bytes and n > 0:
                return n
        return min(len(self._pending), self.max_ops)

    async def _send(self, batch: list[tuple[pb.BatchOp, asyncio.Future[Any]]]) -> None:
        try:
            reply = await self.stub.Batch(pb.BatchRequest(ops=[op for op, _ in batch]), timeout=self.timeout)
        except grpc.RpcError as e:
            err = from_rpc_error(e)
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(err)
        except BaseException as e:  # noqa: BLE001 - never leave a caller waiting
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            if isinstance(e, asyncio.CancelledError):
                raise
        else:
            self.batches_sent += 1
            self.ops_sent += len(batch)
            if len(reply.results) != len(batch):
                err = RaftKVError(f"server answered {len(reply.results)} of {len(batch)} operations",
                                  grpc.StatusCode.INTERNAL)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
            else:
                for (_, fut), res in zip(batch, reply.results, strict=True):
                    if fut.done():
                        continue
                    kind = res.WhichOneof("result")
                    if kind == "error":
                        fut.set_exception(op_error_to_exception(res.error))
                    elif kind is None:
                        fut.set_exception(RaftKVError("empty result", grpc.StatusCode.INTERNAL))
                    else:
                        fut.set_result(getattr(res, kind))
        finally:
            self._inflight -= 1
            if self._pending and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
