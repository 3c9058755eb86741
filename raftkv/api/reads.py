"""Reads as the api serves them: the read policy (layers/read_path.py) decides whether this node may
answer, and its refusals become gRPC statuses here."""

from __future__ import annotations

import grpc

from ..layers.admission import Admission
from ..layers.read_path import ForwardToLeader, ReadPoint, ReadRefused, check_token_term
from ..layers.read_path import prepare_read as _prepare_read
from ..layers.reads import ReadLevel, StalenessBound
from ..server.host import NodeHost
from .errors import RequestError

__all__ = ["ForwardToLeader", "ReadPoint", "check_token_term", "prepare_read"]


async def prepare_read(host: NodeHost, level: ReadLevel, bound: StalenessBound | None, token: bytes,
                       cluster_id: bytes) -> ReadPoint:
    """Wait until this node may serve the read; returns the level actually achieved (ForwardToLeader:
    the leader can serve it; RequestError FAILED_PRECONDITION: nobody can, as asked; Overloaded: too
    many reads wait on this node already, the read budget of admission control)."""
    try:
        with Admission.of(host).read():
            return await _prepare_read(host, level, bound, token, cluster_id)
    except ReadRefused as e:
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, str(e), e.reason) from None
