"""Reading the structured part of a failed gRPC call, shared by the client and by the server (which
forwards KV.Batch sub-batches to the leader and must pass each failure on as it came)."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def error_info(e: grpc.RpcError) -> tuple[str, dict[str, str]]:
    """The reason and metadata of the call's google.rpc.ErrorInfo detail; ("", {}) when it has none."""
    try:
        status = rpc_status.from_call(e)  # type: ignore[arg-type]
    except (ValueError, AttributeError):
        return "", {}
    if status is not None:
        for d in status.details:
            info = error_details_pb2.ErrorInfo()
            if d.Unpack(info):
                return info.reason, dict(info.metadata)
    return "", {}
