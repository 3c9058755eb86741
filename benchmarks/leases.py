"""`python -m benchmarks leases`: what leases cost, raftkv and etcd side by side.

Per system, on a fresh cluster (both clusters up at once, the phases alternating between the systems):
1. the leader's RSS and CPU/s while idle (`--idle` seconds);
2. `--leases` leases granted (TTL `--ttl`, long enough that none expires during the run) by 64 concurrent
   Grants to the leader: grants/s, then the leader's RSS and idle CPU/s with them live;
3. *cadence*: every lease kept alive once per TTL/3 (what etcd's clientv3 does) over KeepAlive streams
   for `--duration`/2 seconds: the leader's CPU/s that keeping them alive costs;
4. *capacity*: `--procs` processes x `--streams` KeepAlive streams, each with `--window` keep-alives
   outstanding, round-robin over the leases, for `--duration`/2 seconds: keep-alives/s answered, the
   leader's CPU cores, and the keep-alives answered with TTL <= 0 (a lease lost: must be 0).
Raw gRPC stubs (raftkv.v1.Lease; etcd's etcdserverpb.Lease), every phase bounded."""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import resource
import sys
import time
from contextlib import ExitStack
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .clusters import Cluster, etcd_version
from .procstat import loadavg, sample
from .runner import finish, running_cluster
from .scale import _table


def _stubs(system: str) -> tuple[Any, Any, Any, Any]:
    """(stub class, grant request, keep-alive request, field name of the TTL in a response)."""
    if system == "raftkv":
        from raftkv.proto.stubs import lease_pb2 as pb
        from raftkv.proto.stubs import lease_pb2_grpc as g

        return (g.LeaseStub, lambda ttl: pb.LeaseGrantRequest(ttl=ttl), lambda i: pb.LeaseKeepAliveRequest(id=i),
                "ttl")
    from raftkv.proto.etcd_stubs import rpc_pb2 as epb
    from raftkv.proto.etcd_stubs import rpc_pb2_grpc as eg

    return (eg.LeaseStub, lambda ttl: epb.LeaseGrantRequest(TTL=ttl), lambda i: epb.LeaseKeepAliveRequest(ID=i),
            "TTL")


async def _grant(system: str, address: str, n: int, ttl: int, concurrency: int = 64) -> tuple[list[int], int]:
    import grpc

    stub_cls, grant, _, _ = _stubs(system)
    ids: list[int] = []
    failed = 0
    todo = iter(range(n))
    async with grpc.aio.insecure_channel(address) as ch:
        stub = stub_cls(ch)
        rpc = stub.Grant if system == "raftkv" else stub.LeaseGrant

        async def worker() -> None:
            nonlocal failed
            for _ in todo:
                try:
                    r = await rpc(grant(ttl), timeout=10)
                    ids.append(r.id if system == "raftkv" else r.ID)
                except grpc.aio.AioRpcError:
                    failed += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ids, failed


async def _keep_alive(system: str, address: str, ids: list[int], streams: int, window: int, seconds: float,
                      rate: float | None) -> dict[str, Any]:
    """Keep-alives over `streams` streams; closed loop with `window` outstanding per stream, or, with `rate`,
    paced at `rate`/s in total."""
    import grpc

    stub_cls, _, keep, ttl_field = _stubs(system)
    answered = lost = 0
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    if not ids:
        return {"answered": 0, "lost": 0, "cpu_s": 0.0}
    stop = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(address) as ch:
        stub = stub_cls(ch)

        async def one_stream(k: int) -> None:
            nonlocal answered, lost
            mine = ids[k::streams] or ids
            credit = asyncio.Semaphore(window)
            per_stream = rate / streams if rate else None

            async def requests():  # noqa: ANN202
                i = 0
                t0 = time.monotonic()
                while time.monotonic() < stop:
                    if per_stream:
                        due = t0 + i / per_stream
                        delay = due - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    else:
                        await credit.acquire()
                    yield keep(mine[i % len(mine)])
                    i += 1

            call = stub.KeepAlive(requests()) if system == "raftkv" else stub.LeaseKeepAlive(requests())
            try:
                async for r in call:
                    answered += 1
                    if getattr(r, ttl_field) <= 0:
                        lost += 1
                    if not per_stream:
                        credit.release()
                    if time.monotonic() >= stop:
                        call.cancel()
                        break
            except (grpc.aio.AioRpcError, asyncio.CancelledError):
                pass

        await asyncio.gather(*(one_stream(k) for k in range(streams)))
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"answered": answered, "lost": lost, "cpu_s": ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime}


def keepalive_process(system: str, address: str, ids: list[int], streams: int, window: int, seconds: float,
                      rate: float | None, conn: Connection) -> None:
    """Entry point of one spawned keep-alive process: imports done, it says so and waits for the start, so
    the measured window holds no process start-up."""
    import grpc  # noqa: F401 - imported before the window opens

    _stubs(system)
    conn.send("ready")
    conn.recv()
    conn.send(asyncio.run(_keep_alive(system, address, ids, streams, window, seconds, rate)))


def _leader_window(c: Cluster, leader: int, fn: Any) -> tuple[Any, float, float]:
    """Runs fn(); the leader's CPU cores over it and its wall time."""
    pid = c.nodes[leader].pid
    s0, t0 = sample(pid), time.monotonic()
    res = fn()
    s1, t1 = sample(pid), time.monotonic()
    cores = (s1.cpu_s - s0.cpu_s) / (t1 - t0) if s0 and s1 else float("nan")
    return res, round(cores, 3), t1 - t0


def _spawned(c: Cluster, leader: int, system: str, ids: list[int], procs: int, streams: int, window: int,
             seconds: float, rate: float | None) -> tuple[list[dict[str, Any]], float, float]:
    """Keep-alive processes started, then run together: (their results, leader CPU cores, window s)."""
    address = c.nodes[leader].client_address
    ctx = mp.get_context("spawn")
    workers = []
    for k in range(procs):
        parent, child = ctx.Pipe()
        part = ids[k::procs]
        p = ctx.Process(target=keepalive_process, daemon=True,
                        args=(system, address, part, streams, window, seconds, rate / procs if rate else None, child))
        p.start()
        workers.append((p, parent))
    try:
        for _, conn in workers:
            conn.recv()

        def go() -> list[dict[str, Any]]:
            for _, conn in workers:
                conn.send("go")
            return [conn.recv() for _, conn in workers]

        return _leader_window(c, leader, go)
    finally:
        for p, _ in workers:
            p.join(10)
            if p.is_alive():
                p.kill()


def measure_leases(system: str, c: Cluster, a: argparse.Namespace) -> dict[str, Any]:
    leader = c.leader_id()
    address = c.nodes[leader].client_address
    pid = c.nodes[leader].pid
    row: dict[str, Any] = {"system": system, "leases": a.leases, "ttl_s": a.ttl, "loadavg": loadavg().split(" ")[0]}
    _, row["idle_cpu_cores_before"], _ = _leader_window(c, leader, lambda: time.sleep(a.idle))
    before = sample(pid)
    (ids, failed), _, grant_s = _leader_window(c, leader, lambda: asyncio.run(_grant(system, address, a.leases, a.ttl)))
    row.update(granted=len(ids), grant_failed=failed, grants_s=round(len(ids) / grant_s))
    _, row["idle_cpu_cores_live"], _ = _leader_window(c, leader, lambda: time.sleep(a.idle))
    after = sample(pid)
    if before and after:
        row.update(rss_before_mb=round(before.rss_bytes / 1e6, 1), rss_after_mb=round(after.rss_bytes / 1e6, 1),
                   rss_per_lease_bytes=round((after.rss_bytes - before.rss_bytes) / max(1, len(ids))))
    half = a.duration / 2
    cadence = len(ids) * 3 / a.ttl
    res, cores, wall = _spawned(c, leader, system, ids, 1, 4, 1, half, cadence)
    row.update(cadence_keepalives_s=round(sum(r["answered"] for r in res) / wall), cadence_cpu_cores=cores,
               cadence_lost=sum(r["lost"] for r in res))
    res, cores, wall = _spawned(c, leader, system, ids, a.procs, a.streams, a.window, half, None)
    row.update(keepalives_s=round(sum(r["answered"] for r in res) / wall), keepalive_cpu_cores=cores,
               keepalive_cpu_us=round(cores * wall / max(1, sum(r["answered"] for r in res)) * 1e6, 1),
               client_cpu_cores=round(sum(r["cpu_s"] for r in res) / wall, 2),
               keepalive_lost=sum(r["lost"] for r in res), loadavg_end=loadavg().split(" ")[0])
    return row


def run_leases(doc: dict[str, Any], out: Path, a: argparse.Namespace) -> None:
    rows: list[dict[str, Any]] = doc.setdefault("leases", [])
    systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    with ExitStack() as stack:
        clusters = {}
        for system in systems:
            print(f"{system}: starting {a.nodes} nodes", file=sys.stderr, flush=True)
            clusters[system] = stack.enter_context(running_cluster(system, out / "data" / f"leases-{system}",
                                                                   a.nodes))
            if system == "etcd":
                doc["meta"]["etcd_version"] = etcd_version()
        for system, c in clusters.items():
            row = measure_leases(system, c, a)
            rows.append(row)
            print(f"  leases {row}", file=sys.stderr, flush=True)
    doc.setdefault("sections", {})["Leases"] = _table(rows, [
        ("system", "system"), ("leases", "granted"), ("grants/s", "grants_s"),
        ("leader RSS before MB", "rss_before_mb"), ("after MB", "rss_after_mb"),
        ("bytes/lease", "rss_per_lease_bytes"), ("idle CPU cores before", "idle_cpu_cores_before"),
        ("idle CPU cores, leases live", "idle_cpu_cores_live"), ("keep-alives/s at TTL/3", "cadence_keepalives_s"),
        ("leader CPU cores at TTL/3", "cadence_cpu_cores"), ("keep-alives/s max", "keepalives_s"),
        ("leader CPU cores at max", "keepalive_cpu_cores"), ("leader CPU µs/keep-alive", "keepalive_cpu_us"),
        ("client CPU cores", "client_cpu_cores"), ("lost", "keepalive_lost"), ("loadavg", "loadavg")])
    finish(doc, out)


def add_parser(sub: Any, common: Any) -> None:
    p = sub.add_parser("leases", help="keep-alives/s; memory and CPU of 10,000 live leases on the leader")
    common(p)
    p.add_argument("--leases", type=int, default=10_000)
    p.add_argument("--ttl", type=int, default=120, help="seconds; long enough that no lease expires in the run")
    p.add_argument("--idle", type=float, default=3.0, help="seconds of each idle CPU measurement")
    p.add_argument("--streams", type=int, default=4, help="KeepAlive streams per process (max phase)")
    p.add_argument("--window", type=int, default=32, help="keep-alives outstanding per stream (max phase)")
    p.add_argument("--systems", default="raftkv,etcd")
    p.set_defaults(duration=10.0)
