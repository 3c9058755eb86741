"""A witness serves no client request (DESIGN.md §7): it holds no data to read and takes no write.

Every call of a data service (raftkv's KV, Batch, Watch, Lease, sessions, locks, snapshots; etcd's KV,
Watch, Lease and data-bearing Maintenance calls) is answered UNAVAILABLE with reason NOT_LEADER and the
leader's id and address (ErrorInfo metadata and `raftkv-leader` trailing metadata), exactly what the
clients already follow to the leader. Membership, status and health stay served: an operator asks a
witness what it is and who leads."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from .errors import _status

SERVED = (
    "/raftkv.v1.Admin/",
    "/raftkv.v1.Raft/",
    "/grpc.health.v1.Health/",
    "/grpc.reflection.",
    "/etcdserverpb.Cluster/",
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/AlarmList",
    "/etcdserverpb.Maintenance/MoveLeader",
)
"""Method prefixes a witness answers: everything else carries data and is refused."""


def refusal(node_id: int, leader_id: int, leader_address: str) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """The status, message and ErrorInfo metadata of a witness's refusal."""
    where = (f"ask the leader, node {leader_id} at {leader_address}" if leader_id and leader_address
             else "ask a data node (no leader is known here now)")
    return (grpc.StatusCode.UNAVAILABLE, f"node {node_id} is a witness: it holds no data; {where}",
            {"leader_id": str(leader_id), "leader_address": leader_address, "witness": str(node_id)})


class WitnessGuard(grpc.aio.ServerInterceptor):
    """Refuses data calls while `host` is a witness (its role may change with the log: checked per call)."""

    def __init__(self, host: Any) -> None:
        self.host = host

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        host = self.host
        if handler is None or details.method.startswith(SERVED) or not host.node.is_witness():
            return handler
        return _refusing(handler, host)


def _refusing(handler: grpc.RpcMethodHandler, host: Any) -> grpc.RpcMethodHandler:
    async def abort(context: grpc.aio.ServicerContext) -> None:
        code, message, metadata = refusal(host.cfg.id, host.node.leader_id, host.leader_address())
        st = _status(code, message, "NOT_LEADER", metadata)
        trailing = tuple(st.trailing_metadata)
        if metadata["leader_address"]:
            trailing += (("raftkv-leader", metadata["leader_address"]),)
        await context.abort(st.code, st.details, trailing)

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort(context)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort(context)
        yield  # pragma: no cover - never reached: abort raises

    des, ser = handler.request_deserializer, handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, des, ser)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, des, ser)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, des, ser)
    return grpc.unary_unary_rpc_method_handler(unary, des, ser)
