"""What it costs a grpcio asyncio server to refuse a call, and so how much offered load any admission
check inside such a server can shed (issue 15's 8x targets).

Each mode is one server process (this module run with `--serve MODE`) with raftkv's gRPC server options,
driven by a closed loop of `--outstanding` unary `KV.Put` calls from this process; the server's CPU per call
is read from /proc (user + system, all its threads):

- `accept`: the handler answers at once (the floor of an answered call, as `floor_server.py`);
- `limiter`: grpcio's own `maximum_concurrent_rpcs`, full (one call held open), so every call is refused
  inside grpcio's Cython server before any Python handler or interceptor runs: the cheapest refusal a
  grpcio server can make;
- `abort`: the handler aborts at once with RESOURCE_EXHAUSTED and no details;
- `raftkv`: the handler raises raftkv's `Overloaded` through raftkv's own `rpc` wrapper and per-RPC metrics
  interceptor, i.e. RESOURCE_EXHAUSTED with the ErrorInfo (reason OVERLOADED) and `grpc-retry-pushback-ms`
  (a leader's refusal minus the admission check itself, a few microseconds).

    .venv/bin/python -m benchmarks.refusal_cost [--calls 5000] [--outstanding 32] [--out FILE]

A server that must refuse R calls per second needs R x (CPU per refusal) of its cores for that alone: at
8x a capacity of C calls/s, 7C refusals/s. The `max refusals/s per core` column is 1 / CPU per refusal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

MODES = ("accept", "limiter", "abort", "raftkv")


# -- the server side ----------------------------------------------------------------------------------
def _servicer(mode: str) -> Any:
    import grpc

    from raftkv.api.errors import rpc
    from raftkv.layers.admission import Overloaded
    from raftkv.proto.stubs import kv_pb2 as pb
    from raftkv.proto.stubs import kv_pb2_grpc

    class Servicer(kv_pb2_grpc.KVServicer):
        host = None  # the rpc wrapper's pressure metadata: none without a host

        async def Put(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
            if mode == "limiter" and request.key == b"hold":
                await asyncio.sleep(3600)  # holds grpcio's only slot: every other call is refused
            elif mode == "abort":
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded")
            return pb.PutResponse()

    class RaftkvRefusal(kv_pb2_grpc.KVServicer):
        host = None

        @rpc
        async def Put(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
            raise Overloaded("proposals", 4096, 4096, 100, "write")

    return RaftkvRefusal() if mode == "raftkv" else Servicer()


async def _serve(mode: str, port: int) -> None:
    import grpc
    from prometheus_client import CollectorRegistry

    from raftkv.proto.stubs import kv_pb2_grpc
    from raftkv.server.grpc_metrics import RequestMetrics
    from raftkv.transport.transport import server_options

    interceptors = [RequestMetrics(CollectorRegistry())] if mode == "raftkv" else []
    server = grpc.aio.server(interceptors=interceptors, options=[*server_options(64 << 20), ("grpc.so_reuseport", 0)],
                             maximum_concurrent_rpcs=1 if mode == "limiter" else None)
    kv_pb2_grpc.add_KVServicer_to_server(_servicer(mode), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(None)


# -- the client side ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _drive(port: int, mode: str, calls: int, outstanding: int, server_pid: int) -> dict[str, Any]:
    import grpc

    from raftkv.proto.stubs import kv_pb2 as pb
    from raftkv.proto.stubs import kv_pb2_grpc

    from .procstat import sample

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = kv_pb2_grpc.KVStub(ch)
        held = None
        if mode == "limiter":
            held = asyncio.ensure_future(stub.Put(pb.PutRequest(key=b"hold"), timeout=3600))
            await asyncio.sleep(0.5)
        req = pb.PutRequest(key=b"k", value=b"v" * 256)
        for _ in range(200):  # warm up (channel, handler caches)
            try:
                await stub.Put(req, timeout=10)
            except grpc.aio.AioRpcError:
                pass
        codes: dict[str, int] = {}
        lat: list[float] = []
        left = calls

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                t0 = time.monotonic()
                try:
                    await stub.Put(req, timeout=10)
                    code = "OK"
                except grpc.aio.AioRpcError as e:
                    code = e.code().name
                lat.append(time.monotonic() - t0)
                codes[code] = codes.get(code, 0) + 1

        s0 = sample(server_pid)
        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(outstanding)))
        wall = time.monotonic() - t0
        s1 = sample(server_pid)
        if held is not None:
            held.cancel()
    assert s0 is not None and s1 is not None
    cpu_us = (s1.cpu_s - s0.cpu_s) / calls * 1e6
    lat.sort()
    return {"mode": mode, "calls": calls, "outstanding": outstanding, "codes": codes,
            "server_cpu_us_per_call": round(cpu_us, 1), "server_cpu_share": round((s1.cpu_s - s0.cpu_s) / wall, 2),
            "calls_per_s": round(calls / wall), "p50_ms": round(lat[len(lat) // 2] * 1000, 2),
            "max_per_core_per_s": round(1e6 / cpu_us) if cpu_us > 0 else None}


def _run_mode(mode: str, calls: int, outstanding: int) -> dict[str, Any]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.refusal_cost", "--serve", mode, "--port", str(port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {mode} server did not start")
        return asyncio.run(_drive(port, mode, calls, outstanding, proc.pid))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--calls", type=int, default=5000, help="calls per mode (default 5000)")
    ap.add_argument("--outstanding", type=int, default=32, help="calls outstanding at once (default 32)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over all modes; the best of each is kept")
    ap.add_argument("--out", help="also write the results as JSON here")
    a = ap.parse_args(argv)
    if a.serve:
        asyncio.run(_serve(a.serve, a.port))
        return 0
    best: dict[str, dict[str, Any]] = {}
    for _ in range(max(1, a.rounds)):  # modes interleaved, so a change of machine load hits each alike
        for mode in MODES:
            r = _run_mode(mode, a.calls, a.outstanding)
            if mode not in best or r["server_cpu_us_per_call"] < best[mode]["server_cpu_us_per_call"]:
                best[mode] = r
    meta = {"loadavg": os.getloadavg(), "time": time.strftime("%Y-%m-%d %H:%M:%S"), "rounds": a.rounds}
    print(f"loadavg {meta['loadavg'][0]:.2f}; best of {a.rounds} rounds, {a.calls} calls each, "
          f"{a.outstanding} outstanding")
    print("| mode | outcome | server CPU µs/call | max calls/s per core | calls/s | p50 ms |")
    print("|---|---|---|---|---|---|")
    for mode in MODES:
        r = best[mode]
        outcome = ", ".join(f"{k} {v}" for k, v in sorted(r["codes"].items()))
        print(f"| {mode} | {outcome} | {r['server_cpu_us_per_call']} | {r['max_per_core_per_s']} | "
              f"{r['calls_per_s']} | {r['p50_ms']} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"meta": meta, "results": best}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
