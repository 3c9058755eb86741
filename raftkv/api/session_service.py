"""The Sessions service (overload.proto): registering and keeping alive the client sessions that make
retried writes exactly-once (storage/sessions.py). Both go through the log, on the leader; a follower
answers NOT_LEADER naming it (the client follows), as for any write it does not forward."""

from __future__ import annotations

import grpc

from ..layers.acks import AckLevel, AckPolicy, AckRequest
from ..proto.stubs import overload_pb2 as pb
from ..proto.stubs import overload_pb2_grpc
from ..server.host import NodeHost
from ..storage import commands
from .errors import invalid, rpc


class SessionService(overload_pb2_grpc.SessionsServicer):
    def __init__(self, host: NodeHost, acks: AckPolicy) -> None:
        self.host = host
        self.acks = acks

    async def _propose(self, cmd: commands.SessionCommand) -> object:
        if not self.host.is_leader:
            raise self.host.not_leader()
        out = await self.acks.write(commands.encode(cmd), AckRequest(AckLevel.MAJORITY))
        return out.result

    @rpc
    async def Register(self, request: pb.RegisterSessionRequest, context: grpc.aio.ServicerContext
                       ) -> pb.RegisterSessionResponse:
        if request.ttl_seconds > commands.MAX_SESSION_TTL_S:
            raise invalid(f"ttl_seconds must be at most {commands.MAX_SESSION_TTL_S}")
        res = await self._propose(commands.RegisterSession(request.ttl_seconds))
        assert isinstance(res, commands.SessionRegistered)
        return pb.RegisterSessionResponse(session_id=res.session_id, ttl_seconds=res.ttl_s)

    @rpc
    async def KeepAlive(self, request: pb.KeepAliveSessionRequest, context: grpc.aio.ServicerContext
                        ) -> pb.KeepAliveSessionResponse:
        return pb.KeepAliveSessionResponse(alive=bool(await self._propose(commands.KeepAliveSession(request.session_id))))
