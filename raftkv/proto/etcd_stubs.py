"""etcd's v3 API stubs (etcdserverpb, mvccpb; generated into raftkv/proto/etcd/ by `make proto`), with a
clear message when they have not been generated yet. raftkv's etcd services (raftkv/api/etcd/) and the
benchmark's etcd client both use these."""

try:
    from .etcd import kv_pb2, rpc_pb2, rpc_pb2_grpc
except ImportError as e:  # pragma: no cover - only on a checkout that skipped the build step
    raise ImportError(f"raftkv's etcd v3 stubs are missing ({e}): run `make proto`") from None

__all__ = ["kv_pb2", "rpc_pb2", "rpc_pb2_grpc"]
