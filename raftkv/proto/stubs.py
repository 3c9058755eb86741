"""The generated modules, with a clear message when `make proto` has not been run."""

try:
    from . import (
        kv_pb2,
        kv_pb2_grpc,
        lease_pb2,
        lease_pb2_grpc,
        overload_pb2,
        overload_pb2_grpc,
        raft_pb2,
        raft_pb2_grpc,
        watch_pb2,
        watch_pb2_grpc,
    )
except ImportError as e:  # pragma: no cover - only on a checkout that skipped the build step
    raise ImportError(f"raftkv's gRPC stubs are missing ({e}): run `make proto`") from None

__all__ = ["kv_pb2", "kv_pb2_grpc", "lease_pb2", "lease_pb2_grpc", "overload_pb2", "overload_pb2_grpc", "raft_pb2",
           "raft_pb2_grpc", "watch_pb2", "watch_pb2_grpc"]
