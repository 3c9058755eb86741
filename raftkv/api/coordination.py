"""Watch and Lease, wired to a node: the watch hub fed by the store's applies, the lease keeper on the
host, their gRPC services. One object, so the process lifecycle adds them in a few lines."""

from __future__ import annotations

from typing import Any

import grpc

from ..proto.stubs import lease_pb2, lease_pb2_grpc, watch_pb2, watch_pb2_grpc
from ..server.host import NodeHost
from ..server.lease_keeper import LeaseKeeper
from ..server.watch_hub import WatchHub, configure_history
from .forward import Forwarder
from .kv_service import KVService
from .lease_service import LeaseService
from .watch_service import WatchService


class Coordination:
    def __init__(self, host: NodeHost, store: Any, forwarder: Forwarder, kv: KVService) -> None:
        cfg = host.cfg
        configure_history(store, cfg.history_revisions, cfg.history_seconds, cfg.history_bytes)
        self.hub = WatchHub(store, cfg.watch_buffer_events)
        host.snapshot_listeners.append(self.hub.on_snapshot)
        self.keeper = LeaseKeeper(host, lambda: store.leases)
        self.watch = WatchService(host, self.hub, forwarder, kv.acks, kv.replies)
        self.lease = LeaseService(host, self.keeper, forwarder, kv.acks, kv.replies)

    def register(self, server: grpc.aio.Server) -> list[str]:
        """Add the services; their full names (for reflection)."""
        watch_pb2_grpc.add_WatchServicer_to_server(self.watch, server)
        lease_pb2_grpc.add_LeaseServicer_to_server(self.lease, server)
        return [watch_pb2.DESCRIPTOR.services_by_name["Watch"].full_name,
                lease_pb2.DESCRIPTOR.services_by_name["Lease"].full_name]

    def start(self) -> None:
        self.keeper.start()

    async def stop(self) -> None:
        await self.keeper.stop()
        self.hub.close()
