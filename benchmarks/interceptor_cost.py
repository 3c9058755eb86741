"""What the per-RPC metrics interceptor (raftkv/server/grpc_metrics.py) costs each call.

Two measures: the wrapper alone (a raftkv handler's coroutine called through the interceptor's wrapper
and directly, many times; the difference per call is what every RPC pays in Python), and whole unary
calls on a real in-process grpc.aio server with and without the interceptor (noisier: gRPC's own cost is
~100x larger). Run: `.venv/bin/python -m benchmarks.interceptor_cost [--calls N]`."""

from __future__ import annotations

import argparse
import asyncio
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from raftkv.server.grpc_metrics import RequestMetrics


class _Context:
    """Just what the wrapper asks of a servicer context."""

    def code(self) -> None:
        return None


async def _wrapper_cost(calls: int) -> tuple[float, float]:
    async def behavior(request: object, context: object) -> object:
        return request

    handler = grpc.unary_unary_rpc_method_handler(behavior)
    interceptor = RequestMetrics(CollectorRegistry())

    async def continuation(details: object) -> grpc.RpcMethodHandler:
        return handler

    class Details:
        method = "/raftkv.v1.KV/Get"

    ctx = _Context()
    best_raw = best_wrapped = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            await behavior(1, ctx)
        best_raw = min(best_raw, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(calls):
            h = await interceptor.intercept_service(continuation, Details())
            await h.unary_unary(1, ctx)
        best_wrapped = min(best_wrapped, time.perf_counter() - t0)
    return best_raw / calls * 1e6, best_wrapped / calls * 1e6


async def _server_cost(calls: int, intercept: bool) -> float:
    server = grpc.aio.server(interceptors=[RequestMetrics(CollectorRegistry())] if intercept else None)
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            req = health_pb2.HealthCheckRequest()
            for _ in range(200):
                await stub.Check(req)
            t0 = time.perf_counter()
            for _ in range(calls):
                await stub.Check(req)
            return (time.perf_counter() - t0) / calls * 1e6
    finally:
        await server.stop(None)


async def _main(calls: int, rpcs: int) -> None:
    raw, wrapped = await _wrapper_cost(calls)
    print(f"wrapper: {wrapped - raw:.2f} us/call added ({raw:.2f} -> {wrapped:.2f} us, best of 5 x {calls} calls)")
    plain, timed = [], []
    for _ in range(3):
        plain.append(await _server_cost(rpcs, False))
        timed.append(await _server_cost(rpcs, True))
    print(f"unary RPC on a real aio server: {min(plain):.1f} us without, {min(timed):.1f} us with the "
          f"interceptor (best of 3 x {rpcs} sequential calls)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--rpcs", type=int, default=3_000)
    a = ap.parse_args()
    asyncio.run(_main(a.calls, a.rpcs))


if __name__ == "__main__":
    main()
