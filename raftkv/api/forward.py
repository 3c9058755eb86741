"""Forwarding a request to the leader, so a client may talk to any node.

A forwarded request carries `raftkv-forwarded` metadata; a node that receives one and is not the leader
either answers NOT_LEADER with the leader's address, never forwards again (no loops)."""

from __future__ import annotations

from typing import Any

import grpc

from ..proto.stubs import kv_pb2_grpc
from ..server.host import NodeHost
from ..tls import aio_channel

FORWARDED = "raftkv-forwarded"


def was_forwarded(context: grpc.aio.ServicerContext) -> bool:
    return any(k == FORWARDED for k, _ in (context.invocation_metadata() or ()))


def _stub(service: str, ch: grpc.aio.Channel) -> Any:
    if service == "KV":
        return kv_pb2_grpc.KVStub(ch)
    if service == "Lease":
        from ..proto.stubs import lease_pb2_grpc

        return lease_pb2_grpc.LeaseStub(ch)
    if service == "Watch":
        from ..proto.stubs import watch_pb2_grpc

        return watch_pb2_grpc.WatchStub(ch)
    return kv_pb2_grpc.AdminStub(ch)


class Forwarder:
    def __init__(self, host: NodeHost) -> None:
        self.host = host
        self._channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, address: str) -> grpc.aio.Channel:
        """The one channel to `address`, shared by every service that forwards (raftkv.v1, etcd v3)."""
        return self._channel(address)

    def _channel(self, address: str) -> grpc.aio.Channel:
        ch = self._channels.get(address)
        if ch is None:
            ch = aio_channel(address, self.host.cfg.tls)
            self._channels[address] = ch
        return ch

    async def call(self, service: str, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        host = self.host
        if was_forwarded(context) or not host.leader_id or host.leader_id == host.cfg.id:
            raise host.not_leader()
        address = host.leader_address()
        if not address:
            raise host.not_leader()
        ch = self._channel(address)
        stub = _stub(service, ch)
        remaining = context.time_remaining()
        return await getattr(stub, method)(request, timeout=remaining, metadata=((FORWARDED, str(host.cfg.id)),))

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
