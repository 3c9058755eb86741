"""etcd's v3 gRPC API (etcdserverpb) on raftkv's client port, beside raftkv.v1: one module per service
(kv.py, cluster.py, maintenance.py, auth.py), each translating to raftkv's own layers. Watch and Lease
are not served yet: pending.py answers them UNIMPLEMENTED with a reason. See README.md, "etcd v3 API"."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from ...layers.acks import AckPolicy
from ...proto.etcd_stubs import rpc_pb2, rpc_pb2_grpc
from ...server.host import NodeHost
from ..admin_service import StoreFacts
from ..forward import Forwarder
from .auth import EtcdAuth
from .cluster import EtcdCluster
from .kv import EtcdKV
from .maintenance import EtcdMaintenance
from .pending import EtcdLeasePending, EtcdWatchPending

SERVICES = ("KV", "Cluster", "Maintenance", "Auth", "Watch", "Lease")


class EtcdServices:
    """The etcd services of one node; `close()` after the server stopped (waits for running scans)."""

    def __init__(self, host: NodeHost, store: StoreFacts, forwarder: Forwarder, acks: AckPolicy) -> None:
        cluster_id: Callable[[], bytes] = lambda: store.cluster_id  # noqa: E731 - read at each call
        self.kv = EtcdKV(host, cluster_id, forwarder, acks)
        self.cluster = EtcdCluster(host, cluster_id, forwarder)
        self.maintenance = EtcdMaintenance(host, cluster_id, forwarder, store)
        self.auth = EtcdAuth(host, cluster_id, forwarder)

    def register(self, server: grpc.aio.Server) -> list[str]:
        """Add the services to `server`; returns their full names (for reflection)."""
        rpc_pb2_grpc.add_KVServicer_to_server(self.kv, server)
        rpc_pb2_grpc.add_ClusterServicer_to_server(self.cluster, server)
        rpc_pb2_grpc.add_MaintenanceServicer_to_server(self.maintenance, server)
        rpc_pb2_grpc.add_AuthServicer_to_server(self.auth, server)
        rpc_pb2_grpc.add_WatchServicer_to_server(EtcdWatchPending(), server)
        rpc_pb2_grpc.add_LeaseServicer_to_server(EtcdLeasePending(), server)
        return [rpc_pb2.DESCRIPTOR.services_by_name[s].full_name for s in SERVICES]

    def close(self) -> None:
        self.kv.close()


__all__ = ["EtcdServices"]
