"""Peer-to-peer Raft traffic over gRPC streams."""

from .transport import Transport

__all__ = ["Transport"]
