"""Overload: offered load from 1x to 8x the cluster's capacity, against admission control.

On a fresh 3-node raftkv cluster: first the capacity is measured (closed loop: `--concurrency` writers for
`--duration`). Then, per factor in `--factors`, an open-loop load offers `factor x capacity` writes per
second for `--duration` (each write is sent on schedule whether or not earlier ones were answered; at most
`--max-in-flight` are outstanding in the harness itself, further ones count as not offered). Raw gRPC
stubs, no client retries, so what the server answers is measured as it is: goodput (answered OK per
second), the share refused OVERLOADED, p99 latency of the accepted writes, the leader's RSS (sampled every
0.2 s), leader changes. With `--stop-follower S`, one more phase at the top factor SIGSTOPs a follower
for S seconds under the load, then SIGCONTs it and times its catch-up. `--value-size` sets the value
size (e.g. 65536). Never part of `make test`; bounded: factors x seconds (+ the stop phase)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .procstat import sample
from .runner import finish, running_cluster
from .scale import _table

PREFIX = b"overload/"


async def _closed_loop(address: str, concurrency: int, seconds: float, value: bytes) -> float:
    import grpc

    from raftkv.proto.stubs import kv_pb2 as pb
    from raftkv.proto.stubs import kv_pb2_grpc

    done = 0
    stop = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(address) as ch:
        stub = kv_pb2_grpc.KVStub(ch)

        async def writer(w: int) -> None:
            nonlocal done
            n = 0
            while time.monotonic() < stop:
                try:
                    await stub.Put(pb.PutRequest(key=PREFIX + b"c%d-%d" % (w, n), value=value), timeout=10)
                    done += 1
                except grpc.aio.AioRpcError:
                    pass
                n += 1

        await asyncio.gather(*(writer(w) for w in range(concurrency)))
    return done / seconds


async def _open_loop(address: str, rate: float, seconds: float, value: bytes, max_in_flight: int,
                     pid: int) -> dict[str, Any]:
    import grpc

    from raftkv.proto.stubs import kv_pb2 as pb
    from raftkv.proto.stubs import kv_pb2_grpc

    ok_lat: list[float] = []
    refused = other = skipped = 0
    rss: list[int] = []
    in_flight = 0
    tasks: set[asyncio.Task[None]] = set()
    async with grpc.aio.insecure_channel(address) as ch:
        stub = kv_pb2_grpc.KVStub(ch)

        async def one(i: int) -> None:
            nonlocal refused, other, in_flight
            t0 = time.monotonic()
            try:
                await stub.Put(pb.PutRequest(key=PREFIX + b"o%d" % i, value=value), timeout=10)
                ok_lat.append(time.monotonic() - t0)
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refused += 1
                else:
                    other += 1
            finally:
                in_flight -= 1

        start = time.monotonic()
        next_rss = start
        i = 0
        while True:
            now = time.monotonic()
            if now - start >= seconds:
                break
            due = int((now - start) * rate)
            while i < due:
                if in_flight >= max_in_flight:
                    skipped += 1
                else:
                    in_flight += 1
                    t = asyncio.get_running_loop().create_task(one(i))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                i += 1
            if now >= next_rss:
                s = sample(pid)
                if s is not None:
                    rss.append(s.rss_bytes)
                next_rss = now + 0.2
            await asyncio.sleep(0.001)
        if tasks:
            await asyncio.wait(tasks, timeout=15)
    ok_lat.sort()
    p99 = ok_lat[int(len(ok_lat) * 0.99) - 1] if ok_lat else None
    sent = i - skipped
    return {"offered_ops_s": round(rate), "sent": sent, "not_offered": skipped,
            "goodput_ops_s": round(len(ok_lat) / seconds), "refused_share": round(refused / sent, 3) if sent else 0.0,
            "other_errors": other, "p99_ms": round(p99 * 1000, 1) if p99 is not None else None,
            "rss_max_mb": round(max(rss) / 1e6, 1) if rss else None, "rss_series": rss}


def run_overload(doc: dict[str, Any], out: Path, a: argparse.Namespace) -> None:
    rows: list[dict[str, Any]] = doc.setdefault("overload", [])
    value = b"v" * a.value_size
    with running_cluster("raftkv", out / "data" / "overload", a.nodes) as c:
        leader = c.leader_id()
        address = c.nodes[leader].client_address
        pid = c.nodes[leader].pid
        capacity = asyncio.run(_closed_loop(address, a.concurrency, a.duration, value))
        print(f"  capacity {capacity:.0f} writes/s (closed loop, c={a.concurrency})", file=sys.stderr, flush=True)
        changes0 = c._status(leader).leader_changes
        phases: list[tuple[float, int | None]] = [(f, None) for f in a.factors]
        if a.stop_follower:
            phases.append((max(a.factors), next(i for i in c.nodes if i != leader)))
        for factor, stopped in phases:
            if stopped is not None:
                os.kill(c.nodes[stopped].pid, signal.SIGSTOP)
            try:
                seconds = a.stop_follower if stopped is not None else a.duration
                row = asyncio.run(_open_loop(address, capacity * factor, seconds, value, a.max_in_flight, pid))
            finally:
                if stopped is not None:
                    os.kill(c.nodes[stopped].pid, signal.SIGCONT)
            if stopped is not None:
                t0 = time.monotonic()
                target = c.commit_index(leader)
                while c.applied(stopped) < target and time.monotonic() - t0 < 120:
                    time.sleep(0.2)
                row["follower_catchup_s"] = round(time.monotonic() - t0, 2)
            row.update(factor=factor, value_bytes=a.value_size, follower_stopped=stopped is not None,
                       leader_changes=c._status(c.leader_id()).leader_changes - changes0)
            rows.append(row)
            print(f"  overload {({k: v for k, v in row.items() if k != 'rss_series'})}", file=sys.stderr, flush=True)
    _plot(rows, out)
    doc.setdefault("sections", {})["Overload: offered load against admission control"] = _table(rows, [
        ("factor", "factor"), ("follower stopped", "follower_stopped"), ("offered/s", "offered_ops_s"),
        ("goodput/s", "goodput_ops_s"), ("refused share", "refused_share"), ("p99 accepted ms", "p99_ms"),
        ("leader RSS max MB", "rss_max_mb"), ("leader changes", "leader_changes"), ("other errors", "other_errors"),
        ("not offered (harness cap)", "not_offered"), ("follower catch-up s", "follower_catchup_s")])
    finish(doc, out)


def _plot(rows: list[dict[str, Any]], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    base = [r for r in rows if not r["follower_stopped"]]
    fig, (g, m) = plt.subplots(1, 2, figsize=(10, 4))
    g.plot([r["factor"] for r in base], [r["goodput_ops_s"] for r in base], marker="o")
    g.set_xlabel("offered load (x capacity)")
    g.set_ylabel("goodput (writes/s)")
    m.plot([r["factor"] for r in base], [r["rss_max_mb"] or 0 for r in base], marker="o")
    m.set_xlabel("offered load (x capacity)")
    m.set_ylabel("leader RSS max (MB)")
    fig.tight_layout()
    fig.savefig(out / "overload.png")
    plt.close(fig)


def add_parser(sub: Any, common: Any) -> None:
    ov = sub.add_parser("overload", help="offered load 1x..8x capacity: goodput, refusals, p99, leader RSS")
    common(ov)
    ov.add_argument("--factors", type=lambda s: [float(x) for x in s.split(",")], default=[1.0, 2.0, 4.0, 8.0])
    ov.add_argument("--concurrency", type=int, default=32, help="writers of the capacity measurement")
    ov.add_argument("--max-in-flight", type=int, default=4000, help="the harness's own bound on outstanding writes")
    ov.add_argument("--stop-follower", type=float, default=0.0,
                    help="seconds a follower is SIGSTOPped in one more phase at the top factor (0: none)")
