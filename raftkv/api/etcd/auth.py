"""etcdserverpb.Auth as an etcd whose authentication is off answers it, because raftkv offers no users
and roles: Authenticate is etcd's "authentication is not enabled" (etcd clients given a user then go on
without a token, as they do against such an etcd), AuthStatus says disabled, AuthDisable is a no-op, and
AuthEnable is refused. The user and role methods are not served."""

from __future__ import annotations

import grpc

from ...proto.etcd_stubs import rpc_pb2 as epb
from ...proto.etcd_stubs import rpc_pb2_grpc as epb_grpc
from .base import EtcdBase
from .errors import EtcdError, etcd_rpc

AUTH_NOT_ENABLED = "etcdserver: authentication is not enabled"


class EtcdAuth(EtcdBase, epb_grpc.AuthServicer):
    @etcd_rpc
    async def Authenticate(self, request: epb.AuthenticateRequest, context: grpc.aio.ServicerContext
                           ) -> epb.AuthenticateResponse:
        raise EtcdError(grpc.StatusCode.FAILED_PRECONDITION, AUTH_NOT_ENABLED)

    @etcd_rpc
    async def AuthStatus(self, request: epb.AuthStatusRequest, context: grpc.aio.ServicerContext
                         ) -> epb.AuthStatusResponse:
        return epb.AuthStatusResponse(header=self.header(), enabled=False)

    @etcd_rpc
    async def AuthDisable(self, request: epb.AuthDisableRequest, context: grpc.aio.ServicerContext
                          ) -> epb.AuthDisableResponse:
        return epb.AuthDisableResponse(header=self.header())

    @etcd_rpc
    async def AuthEnable(self, request: epb.AuthEnableRequest, context: grpc.aio.ServicerContext
                         ) -> epb.AuthEnableResponse:
        raise EtcdError(grpc.StatusCode.FAILED_PRECONDITION,
                        "raftkv offers no authentication (users and roles); protect the client port with TLS "
                        "client certificates (--client-cert-auth) instead")
