"""One peer round trip through raftkv's own transport, over gRPC streams or TCP peer ports, in two processes.

`python -m benchmarks.peer_pingpong --transport grpc|tcp [--rounds N]`: node 1 sends node 2 an APP carrying
one 300-byte entry, node 2's inbox hands it to a callback that answers with an APP_RESP, and node 1 waits
for it before the next: the two peer hops of a lone write, with nothing else (no Raft, no disk). Prints the
round trip's p50 / p90 / p99 and the CPU seconds both processes spent per 1,000 round trips (from /proc), which a
loaded machine disturbs less than latency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

import grpc

from raftkv.core import Entry, Message, MessageType
from raftkv.transport import Transport
from raftkv.transport.tcp_peer import TcpPeerServer
from raftkv.transport.transport import server_options

from .ports import free_port

CLUSTER = b"p" * 16


async def _node(node_id: int, address: str, peer_listen: str, on_message: object) -> tuple[Transport, object, object]:
    t = Transport(node_id, address, lambda: CLUSTER, on_message=on_message, on_unreachable=lambda _: None)  # type: ignore[arg-type]
    server = grpc.aio.server(options=server_options(4 << 20))
    t.register(server)
    server.add_insecure_port(address)
    await server.start()
    port = None
    if peer_listen:
        port = TcpPeerServer(t, None, 4 << 20)
        await port.start(peer_listen)
    return t, server, port


async def echo(address: str, peer_listen: str, back: str, back_peer: str) -> None:
    t: Transport | None = None

    def answer(m: Message) -> None:
        assert t is not None
        t.send([Message(MessageType.APP_RESP, to=1, frm=2, term=m.term, index=m.index + 1)])

    t, server, port = await _node(2, address, peer_listen, answer)  # held: a dropped grpc.aio server stops
    t.add_peer(1, back, back_peer)
    await asyncio.Event().wait()
    print(server, port)


def _cpu(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(kind: str, rounds: int, warmup: int) -> dict[str, float]:
    a, b = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    pa, pb = (f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}") if kind == "tcp" else ("", "")
    child = subprocess.Popen([sys.executable, "-m", "benchmarks.peer_pingpong", "--echo", b, pb, a, pa])
    got: asyncio.Queue[Message] = asyncio.Queue()
    t, server, port = await _node(1, a, pa, got.put_nowait)
    try:
        t.add_peer(2, b, pb)
        data = os.urandom(300)
        times: list[float] = []
        cpu0 = c0 = 0.0
        for i in range(warmup + rounds):
            if i == warmup:
                cpu0, c0 = time.process_time(), _cpu(child.pid)
            start = time.perf_counter()
            while True:
                t.send([Message(MessageType.APP, to=2, frm=1, term=1, index=i, log_term=1,
                                entries=[Entry(1, i + 1, data=data)], commit=i)])
                try:
                    await asyncio.wait_for(got.get(), 2.0)  # the echo may still be starting
                    break
                except TimeoutError:
                    continue
            times.append(time.perf_counter() - start)
        cpu = time.process_time() - cpu0 + _cpu(child.pid) - c0
        times = times[warmup:]
        q = statistics.quantiles(times, n=100)
        return {"p50_us": statistics.median(times) * 1e6, "p90_us": q[89] * 1e6, "p99_us": q[98] * 1e6,
                "cpu_ms_per_1k": cpu * 1e6 / rounds}
    finally:
        child.kill()
        child.wait()
        await t.stop()
        if port is not None:
            await port.stop()  # type: ignore[attr-defined]
        await server.stop(0)  # type: ignore[attr-defined]


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--echo":
        asyncio.run(echo(*sys.argv[2:6]))
        return 0
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peer_pingpong", description=__doc__)
    ap.add_argument("--transport", choices=["grpc", "tcp"], required=True)
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    a = ap.parse_args()
    r = asyncio.run(drive(a.transport, a.rounds, a.warmup))
    load = open("/proc/loadavg").read().split()[0]
    print(f"{a.transport}: round trip p50 {r['p50_us']:.0f} µs, p90 {r['p90_us']:.0f} µs, p99 {r['p99_us']:.0f} µs; "
          f"CPU (both processes) "
          f"{r['cpu_ms_per_1k']:.0f} ms per 1,000 round trips; loadavg {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
