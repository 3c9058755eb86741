"""The Lease service: grant, revoke, keep-alive, time-to-live, list.

Grants and revokes are commands through the log (served by the leader; other nodes forward them).
Keep-alives and time-to-live are the leader's own (server/lease_keeper.py): a follower answers a
KeepAlive stream with NOT_LEADER naming the leader, and forwards TimeToLive and List."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import grpc

from ..layers.acks import AckPolicy, AckRequest
from ..proto.stubs import lease_pb2 as lpb
from ..proto.stubs import lease_pb2_grpc
from ..server.host import NodeHost
from ..server.lease_keeper import LeaseKeeper
from ..storage import commands
from ..storage.commands import MAX_LEASE_ID
from ..storage.errors import LeaseNotFound
from .errors import _status, classify, invalid, rpc
from .forward import Forwarder
from .replies import Replies


class LeaseService(lease_pb2_grpc.LeaseServicer):
    def __init__(self, host: NodeHost, keeper: LeaseKeeper, forwarder: Forwarder, acks: AckPolicy,
                 replies: Replies) -> None:
        self.host = host
        self.keeper = keeper
        self.fwd = forwarder
        self.acks = acks
        self.replies = replies

    def _lease_id(self, lease_id: int) -> int:
        if not 0 < lease_id <= MAX_LEASE_ID:
            raise invalid(f"lease id must be in 1..{MAX_LEASE_ID}, not {lease_id}")
        return lease_id

    async def _write(self, cmd: commands.Command) -> Any:
        return await self.acks.write(commands.encode(cmd), AckRequest())

    @rpc
    async def Grant(self, request: lpb.LeaseGrantRequest, context: grpc.aio.ServicerContext) -> lpb.LeaseGrantResponse:
        top = self.host.cfg.max_lease_ttl
        if not 1 <= request.ttl <= top:
            raise invalid(f"lease TTL must be in 1..{top} seconds (--max-lease-ttl), not {request.ttl}")
        if request.id:
            self._lease_id(request.id)
        if not self.host.is_leader:
            return await self.fwd.call("Lease", "Grant", request, context)
        out = await self._write(commands.LeaseGrant(request.id, request.ttl))
        reply = lpb.LeaseGrantResponse(id=out.result.lease_id, ttl=out.result.ttl)
        reply.meta.CopyFrom(self.replies.write_meta(out))
        return reply

    @rpc
    async def Revoke(self, request: lpb.LeaseRevokeRequest,
                     context: grpc.aio.ServicerContext) -> lpb.LeaseRevokeResponse:
        self._lease_id(request.id)
        if not self.host.is_leader:
            return await self.fwd.call("Lease", "Revoke", request, context)
        out = await self._write(commands.LeaseRevoke(request.id))
        reply = lpb.LeaseRevokeResponse(deleted=out.result.deleted)
        reply.meta.CopyFrom(self.replies.write_meta(out))
        return reply

    async def KeepAlive(self, request_iterator: AsyncIterator[lpb.LeaseKeepAliveRequest],
                        context: grpc.aio.ServicerContext) -> AsyncIterator[lpb.LeaseKeepAliveResponse]:
        me = self.host.cfg.id
        try:
            async for r in request_iterator:
                self._lease_id(r.id)
                ttl = self.keeper.keep_alive(r.id)
                yield lpb.LeaseKeepAliveResponse(id=r.id, ttl=ttl, served_by=me)
        except grpc.aio.AbortError:
            raise
        except Exception as e:  # noqa: BLE001 - every failure is a status
            err = classify(e)
            if err.reason == "NOT_LEADER" and err.metadata.get("leader_address"):
                context.set_trailing_metadata((("raftkv-leader", err.metadata["leader_address"]),))
            await context.abort_with_status(_status(err.code, str(err), err.reason, err.metadata))

    @rpc
    async def TimeToLive(self, request: lpb.LeaseTimeToLiveRequest,
                         context: grpc.aio.ServicerContext) -> lpb.LeaseTimeToLiveResponse:
        self._lease_id(request.id)
        if not self.host.is_leader:
            return await self.fwd.call("Lease", "TimeToLive", request, context)
        lease = self.keeper.table.get(request.id)
        if lease is None:
            raise LeaseNotFound(request.id)
        left = self.keeper.remaining(request.id)
        return lpb.LeaseTimeToLiveResponse(id=request.id, ttl=math.ceil(left), granted_ttl=lease.ttl,
                                           keys=sorted(lease.keys) if request.keys else [],
                                           served_by=self.host.cfg.id)

    @rpc
    async def List(self, request: lpb.LeaseListRequest, context: grpc.aio.ServicerContext) -> lpb.LeaseListResponse:
        if not self.host.is_leader:
            return await self.fwd.call("Lease", "List", request, context)
        return lpb.LeaseListResponse(leases=[lpb.LeaseStatus(id=i, granted_ttl=lease.ttl, keys=len(lease.keys))
                                             for i, lease in sorted(self.keeper.table.leases.items())])
