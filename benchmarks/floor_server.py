"""The gRPC floor: a server of the raftkv.v1.KV service whose methods do nothing, in one process, with
raftkv's own gRPC server options. Driven by the same clients as raftkv (`--systems floor` in `run`,
`hops --floor`), it measures what one RPC costs in grpcio's asyncio server on this machine (CPU per call,
latency of a lone call) -- the part of raftkv's per-RPC cost no change inside raftkv can remove.

    python -m benchmarks.floor_server --listen 127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc

from raftkv.proto.stubs import kv_pb2 as pb
from raftkv.proto.stubs import kv_pb2_grpc
from raftkv.transport.transport import server_options


class NullKV(kv_pb2_grpc.KVServicer):
    """Answers at once with empty replies (a Batch: one empty result of the operation's kind each)."""

    async def Put(self, request: pb.PutRequest, context: grpc.aio.ServicerContext) -> pb.PutResponse:
        return pb.PutResponse()

    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.GetResponse:
        return pb.GetResponse()

    async def Txn(self, request: pb.TxnRequest, context: grpc.aio.ServicerContext) -> pb.TxnResponse:
        return pb.TxnResponse(succeeded=True)

    async def Batch(self, request: pb.BatchRequest, context: grpc.aio.ServicerContext) -> pb.BatchResponse:
        return pb.BatchResponse(results=[pb.BatchResult(get=pb.GetResponse()) if op.WhichOneof("op") == "get"
                                         else pb.BatchResult(put=pb.PutResponse()) for op in request.ops])


async def serve(listen: str) -> None:
    server = grpc.aio.server(options=[*server_options(64 << 20), ("grpc.so_reuseport", 0)])
    kv_pb2_grpc.add_KVServicer_to_server(NullKV(), server)
    server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    asyncio.run(serve(ap.parse_args().listen))


if __name__ == "__main__":
    main()
