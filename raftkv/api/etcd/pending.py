"""Watch and Lease until raftkv's watch history and leases are served through this API: every call is
UNIMPLEMENTED with a message that says so (rather than gRPC's bare "Method not found!"), so
`etcdctl watch`, `lease`, `lock` and `elect` fail at once with a reason."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from ...proto.etcd_stubs import rpc_pb2 as epb
from ...proto.etcd_stubs import rpc_pb2_grpc as epb_grpc

WATCH = "raftkv does not serve etcd's Watch yet (watches are not offered on this API)"
LEASE = "raftkv does not serve etcd's leases yet (Lease service: grant, keep-alive, revoke, time-to-live)"


class EtcdWatchPending(epb_grpc.WatchServicer):
    async def Watch(self, request_iterator: AsyncIterator[epb.WatchRequest], context: grpc.aio.ServicerContext
                    ) -> AsyncIterator[epb.WatchResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, WATCH)
        yield epb.WatchResponse()  # never reached: makes this a stream handler


class EtcdLeasePending(epb_grpc.LeaseServicer):
    async def LeaseGrant(self, request: epb.LeaseGrantRequest, context: grpc.aio.ServicerContext
                         ) -> epb.LeaseGrantResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, LEASE)

    async def LeaseRevoke(self, request: epb.LeaseRevokeRequest, context: grpc.aio.ServicerContext
                          ) -> epb.LeaseRevokeResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, LEASE)

    async def LeaseKeepAlive(self, request_iterator: AsyncIterator[epb.LeaseKeepAliveRequest],
                             context: grpc.aio.ServicerContext) -> AsyncIterator[epb.LeaseKeepAliveResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, LEASE)
        yield epb.LeaseKeepAliveResponse()  # never reached: makes this a stream handler

    async def LeaseTimeToLive(self, request: epb.LeaseTimeToLiveRequest, context: grpc.aio.ServicerContext
                              ) -> epb.LeaseTimeToLiveResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, LEASE)

    async def LeaseLeases(self, request: epb.LeaseLeasesRequest, context: grpc.aio.ServicerContext
                          ) -> epb.LeaseLeasesResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, LEASE)
