"""etcdserverpb.Lease on raftkv: etcd's lease calls over raftkv's lease commands and lease keeper.

- LeaseGrant / LeaseRevoke are raftkv's `LeaseGrant` / `LeaseRevoke` commands through the log (the
  leader's; other members forward them). ID 0 lets raftkv choose: the id is the revision of the grant.
  A TTL below etcd's minimum (1.5 election timeouts, rounded up) is raised to it, as etcd does; one above
  --max-lease-ttl is etcd's "too large lease TTL".
- LeaseKeepAlive renews on the leader's keeper (server/lease_keeper.py); a follower relays the stream to
  the leader's etcd Lease service. A lease that does not exist (or just expired) is answered TTL 0, as
  etcd answers it (clients report "requested lease not found").
- LeaseTimeToLive / LeaseLeases are the leader's view (forwarded); an unknown lease is TTL -1, as etcd's.
  TTL is the whole seconds left, rounded down as etcd's."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from ...layers.acks import AckPolicy, AckRequest
from ...proto.etcd_stubs import rpc_pb2 as epb
from ...proto.etcd_stubs import rpc_pb2_grpc as epb_grpc
from ...server.host import NodeHost
from ...server.lease_keeper import LeaseKeeper
from ...storage import commands
from ...storage.errors import LeaseNotFound
from ..forward import FORWARDED, Forwarder, was_forwarded
from . import errors as E
from .base import EtcdBase
from .errors import etcd_rpc, to_etcd


class EtcdLease(EtcdBase, epb_grpc.LeaseServicer):
    def __init__(self, host: NodeHost, cluster_id: Callable[[], bytes], forwarder: Forwarder, acks: AckPolicy,
                 keeper: LeaseKeeper) -> None:
        super().__init__(host, cluster_id, forwarder)
        self.acks = acks
        self.keeper = keeper

    def min_ttl(self) -> int:
        """etcd's minimum lease TTL: 1.5 election timeouts, in whole seconds rounded up."""
        cfg = self.host.cfg
        return max(1, math.ceil(1.5 * cfg.election_ticks * cfg.tick_ms / 1000))

    async def _commit(self, cmd: commands.Command) -> Any:
        return await self.acks.write(commands.encode(cmd), AckRequest())

    @etcd_rpc
    async def LeaseGrant(self, request: epb.LeaseGrantRequest, context: grpc.aio.ServicerContext
                         ) -> epb.LeaseGrantResponse:
        if request.TTL > self.host.cfg.max_lease_ttl:
            raise E.LEASE_TTL_TOO_LARGE()
        if request.ID < 0:
            raise E.LEASE_NOT_FOUND()
        if not self.host.is_leader:
            return await self.forward("Lease", "LeaseGrant", request, context)
        ttl = min(max(request.TTL, self.min_ttl()), self.host.cfg.max_lease_ttl)
        out = await self._commit(commands.LeaseGrant(request.ID, ttl))
        return epb.LeaseGrantResponse(header=self.header(out.index), ID=out.result.lease_id, TTL=out.result.ttl)

    @etcd_rpc
    async def LeaseRevoke(self, request: epb.LeaseRevokeRequest, context: grpc.aio.ServicerContext
                          ) -> epb.LeaseRevokeResponse:
        if request.ID <= 0:
            raise E.LEASE_NOT_FOUND()
        if not self.host.is_leader:
            return await self.forward("Lease", "LeaseRevoke", request, context)
        out = await self._commit(commands.LeaseRevoke(request.ID))
        return epb.LeaseRevokeResponse(header=self.header(out.index))

    def _renew(self, lease_id: int) -> int:
        try:
            return self.keeper.keep_alive(lease_id) if lease_id > 0 else 0
        except LeaseNotFound:  # also an expired one: etcd answers TTL 0
            return 0

    async def LeaseKeepAlive(self, request_iterator: AsyncIterator[epb.LeaseKeepAliveRequest],
                             context: grpc.aio.ServicerContext) -> AsyncIterator[epb.LeaseKeepAliveResponse]:
        upstream: Any = None
        try:
            async for r in request_iterator:
                if self.host.is_leader:
                    ttl = self._renew(r.ID)
                    yield epb.LeaseKeepAliveResponse(header=self.header(), ID=r.ID, TTL=ttl)
                    continue
                if upstream is None:
                    upstream = self._upstream(context)
                await upstream.write(r)
                reply = await upstream.read()
                if reply is grpc.aio.EOF:
                    raise E.LEADER_CHANGED()
                yield reply
        except (grpc.aio.AbortError, GeneratorExit):
            raise
        except grpc.aio.AioRpcError as e:  # the leader's stream failed: its status is already etcd's
            await context.abort(e.code(), e.details() or "")
        except Exception as e:  # noqa: BLE001 - every failure must become a status
            err = to_etcd(e)
            await context.abort(err.code, str(err))
        finally:
            if upstream is not None:
                upstream.cancel()

    def _upstream(self, context: grpc.aio.ServicerContext) -> Any:
        """A keep-alive stream to the leader's etcd Lease service (a relayed stream is never relayed again)."""
        host = self.host
        address = host.leader_address() if host.leader_id and host.leader_id != host.cfg.id else ""
        if was_forwarded(context) or not address:
            raise host.not_leader()
        stub = epb_grpc.LeaseStub(self.fwd.channel(address))
        return stub.LeaseKeepAlive(metadata=((FORWARDED, str(host.cfg.id)),))

    @etcd_rpc
    async def LeaseTimeToLive(self, request: epb.LeaseTimeToLiveRequest, context: grpc.aio.ServicerContext
                              ) -> epb.LeaseTimeToLiveResponse:
        if not self.host.is_leader:
            return await self.forward("Lease", "LeaseTimeToLive", request, context)
        lease = self.keeper.table.get(request.ID) if request.ID > 0 else None
        if lease is None:
            return epb.LeaseTimeToLiveResponse(header=self.header(), ID=request.ID, TTL=-1)
        left = self.keeper.remaining(request.ID)
        return epb.LeaseTimeToLiveResponse(header=self.header(), ID=request.ID, TTL=int(left), grantedTTL=lease.ttl,
                                           keys=sorted(lease.keys) if request.keys else [])

    @etcd_rpc
    async def LeaseLeases(self, request: epb.LeaseLeasesRequest, context: grpc.aio.ServicerContext
                          ) -> epb.LeaseLeasesResponse:
        if not self.host.is_leader:
            return await self.forward("Lease", "LeaseLeases", request, context)
        return epb.LeaseLeasesResponse(header=self.header(),
                                       leases=[epb.LeaseStatus(ID=i) for i in sorted(self.keeper.table.leases)])


__all__ = ["EtcdLease"]
