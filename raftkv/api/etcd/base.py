"""What every etcd service shares: the ResponseHeader, and forwarding a request to the leader.

ResponseHeader: `cluster_id` is the first 8 bytes of raftkv's cluster id (big-endian), `member_id` the
node id, `raft_term` the node's current term, `revision` the revision the answer reflects: for a write
the log index of its entry, for a read the applied index of the state read (raftkv's revision of a
change is the log index of the entry that made it, so revisions are monotonic but not contiguous)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from ...proto.etcd_stubs import rpc_pb2 as epb
from ...proto.etcd_stubs import rpc_pb2_grpc as epb_grpc
from ...server.host import NodeHost
from ..forward import FORWARDED, Forwarder, was_forwarded
from .levels import FORWARDED_KEYS

_STUBS = {"KV": epb_grpc.KVStub, "Cluster": epb_grpc.ClusterStub, "Maintenance": epb_grpc.MaintenanceStub}


def cluster_id_u64(cluster_id: bytes) -> int:
    return int.from_bytes(cluster_id[:8].rjust(8, b"\0"), "big")


class EtcdBase:
    def __init__(self, host: NodeHost, cluster_id: Callable[[], bytes], forwarder: Forwarder) -> None:
        self.host = host
        self.cluster_id = cluster_id
        self.fwd = forwarder

    def header(self, revision: int | None = None) -> epb.ResponseHeader:
        h = self.host
        return epb.ResponseHeader(cluster_id=cluster_id_u64(self.cluster_id()), member_id=h.cfg.id,
                                  revision=h.applied if revision is None else revision, raft_term=h.node.term)

    async def forward(self, service: str, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Send the request to the leader's etcd service and answer with its reply and trailers (a
        forwarded request is never forwarded again: NotLeader then)."""
        host = self.host
        if was_forwarded(context) or not host.leader_id or host.leader_id == host.cfg.id:
            raise host.not_leader()
        address = host.leader_address()
        if not address:
            raise host.not_leader()
        stub = _STUBS[service](self.fwd.channel(address))
        md = [(FORWARDED, str(host.cfg.id))]
        md += [(k, v) for k, v in (context.invocation_metadata() or ()) if k in FORWARDED_KEYS]
        call = getattr(stub, method)(request, timeout=context.time_remaining(), metadata=md)
        reply = await call
        trailers = await call.trailing_metadata()
        if trailers:
            context.set_trailing_metadata(tuple((k, v) for k, v in trailers if k.startswith("raftkv-")))
        return reply
