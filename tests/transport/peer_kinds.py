"""The two ways a transport reaches a peer, for tests that must hold over both: a gRPC stream to the peer's
Raft service, or TCP frames to its peer port (transport/tcp_peer.py)."""

from __future__ import annotations

from benchmarks.ports import free_port
from raftkv.transport import Transport
from raftkv.transport.tcp_peer import TcpPeerServer

KINDS = ("grpc", "tcp")


async def peer_port(t: Transport, kind: str, max_frame: int) -> tuple[str, TcpPeerServer | None]:
    """For `tcp`: a peer port serving `t` (its address and server); for `grpc`: ("", None)."""
    if kind != "tcp":
        return "", None
    address = f"127.0.0.1:{free_port()}"
    server = TcpPeerServer(t, None, max_frame)
    await server.start(address)
    return address, server
