"""`python -m benchmarks watch`: watch fan-out, raftkv and etcd side by side.

Per watcher count W (`--watchers 1,100,1000`) and per system: W watches of one fresh prefix, spread
round-robin over the nodes (etcd: its members), multiplexed on one Watch stream per node per watcher
process (`--procs` spawned processes, as etcd's clientv3 puts every watch of a client on one stream). Once
every watch is created, one writer puts at `--rate` puts/s for `--duration` seconds into the prefix
(open loop through the leader, at most 64 outstanding). Reported: events/s delivered in total (all watches),
the delay from each put's acknowledgement at the writer to its delivery at each watch (p50/p99; negative
when the event overtook the acknowledgement), whether every watch got every acknowledged put exactly once
in revision order (and all in the same order), the CPU of the watcher processes against the window (to
tell whether the client side bounds the figure), and the servers' CPU. Both clusters run at once and the
systems alternate per W, so a change of background load falls on both."""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import sys
import time
from array import array
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .clusters import Cluster, etcd_version
from .procstat import loadavg, sample
from .runner import finish, running_cluster
from .scale import _table
from .watch_load import watcher_process, write_at_rate


def _quantile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    return xs[min(len(xs) - 1, max(0, int(len(xs) * q) - 1))]


def _plan(endpoints: list[str], watchers: int, procs: int) -> list[list[tuple[str, list[int]]]]:
    """Watch i goes to node i % n and process i % procs; per process one stream per node it uses."""
    per: list[dict[str, list[int]]] = [{} for _ in range(procs)]
    for i in range(watchers):
        per[i % procs].setdefault(endpoints[i % len(endpoints)], []).append(i + 1)
    return [list(d.items()) for d in per if d]


def _cpu(c: Cluster) -> dict[int, float]:
    out = {}
    for i, pid in c.pids().items():
        s = sample(pid)
        if s is not None:
            out[i] = s.cpu_s
    return out


def measure_watch(system: str, c: Cluster, watchers: int, rate: float, seconds: float, procs: int,
                  tag: str) -> dict[str, Any]:
    prefix = f"watch/{tag}/".encode()
    endpoints = c.endpoints()
    leader = c.leader_id()
    plans = _plan(endpoints, watchers, min(procs, watchers))
    ctx = mp.get_context("spawn")
    workers = []
    for plan in plans:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=watcher_process, args=(system, plan, prefix, child), daemon=True)
        p.start()
        workers.append((p, parent))
    row: dict[str, Any] = {"system": system, "watchers": watchers, "rate": rate, "loadavg": loadavg().split(" ")[0]}
    try:
        ready = sum(conn.recv()[1] for _, conn in workers)
        row["watches_created"] = ready
        cpu0, t0 = _cpu(c), time.monotonic()
        w = asyncio.run(write_at_rate(system, c.nodes[leader].client_address, prefix, rate, seconds))
        acked: dict[int, float] = w.pop("acked")
        for _, conn in workers:
            conn.send((acked, 20.0))
        results = [conn.recv() for _, conn in workers]
        cpu1, t1 = _cpu(c), time.monotonic()
    finally:
        for p, _ in workers:
            p.join(10)
            if p.is_alive():
                p.kill()
    delays = array("d")
    orders: dict[str, int] = {}
    problems: list[str] = []
    for r in results:
        delays.frombytes(r["delays"])
        for k, v in r["orders"].items():
            orders[k] = orders.get(k, 0) + v
        problems += r["problems"]
    ds = sorted(delays)
    events = sum(r["events"] for r in results)
    last = max((r["last"] for r in results if r["last"] is not None), default=None)
    span = (last - w["start"]) if last is not None else seconds
    complete = sum(r["complete"] for r in results)
    window = t1 - t0
    row.update(
        puts_acked=len(acked), puts_failed=w["failed"], puts_skipped=w["skipped"],
        write_p50_ms=w["write_p50_ms"], write_p99_ms=w["write_p99_ms"],
        events=events, events_per_message=round(events / max(1, sum(r["messages"] for r in results)), 2),
        events_s=round(events / span) if span > 0 else None,
        expected_events=len(acked) * watchers,
        delay_p50_ms=round(_quantile(ds, 0.5) * 1000, 2) if ds else None,
        delay_p99_ms=round(_quantile(ds, 0.99) * 1000, 2) if ds else None,
        delay_max_ms=round(ds[-1] * 1000, 2) if ds else None,
        complete_watches=complete, exactly_once_in_order=complete == watchers and len(orders) == 1,
        distinct_orders=len(orders), problems=problems[:5],
        unacked_events=sum(r["unacked_events"] for r in results),
        client_cpu_cores=round(sum(r["cpu_s"] for r in results) / window, 2),
        server_cpu_cores=round(sum(cpu1.get(i, 0) - cpu0.get(i, 0) for i in cpu1) / window, 2),
        leader_cpu_cores=round((cpu1.get(leader, 0) - cpu0.get(leader, 0)) / window, 2),
        client_cpu_us_per_event=round(sum(r["cpu_s"] for r in results) / max(1, events) * 1e6, 1),
        server_cpu_us_per_event=round(sum(cpu1.get(i, 0) - cpu0.get(i, 0) for i in cpu1) / max(1, events) * 1e6, 1),
        window_s=round(window, 2), watcher_procs=len(plans), loadavg_end=loadavg().split(" ")[0])
    return row


def run_watch(doc: dict[str, Any], out: Path, a: argparse.Namespace) -> None:
    rows: list[dict[str, Any]] = doc.setdefault("watch", [])
    systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    with ExitStack() as stack:
        clusters = {}
        for system in systems:
            print(f"{system}: starting {a.nodes} nodes", file=sys.stderr, flush=True)
            clusters[system] = stack.enter_context(running_cluster(system, out / "data" / f"watch-{system}", a.nodes))
            if system == "etcd":
                doc["meta"]["etcd_version"] = etcd_version()
        for n in a.watchers:
            for system, c in clusters.items():
                row = measure_watch(system, c, n, a.rate, a.duration, a.procs, f"w{n}")
                rows.append(row)
                print(f"  watch {({k: v for k, v in row.items() if k != 'problems'})}", file=sys.stderr, flush=True)
    doc.setdefault("sections", {})["Watch fan-out"] = _table(rows, [
        ("system", "system"), ("watchers", "watchers"), ("puts/s offered", "rate"), ("puts acked", "puts_acked"),
        ("events/s delivered", "events_s"), ("events", "events"), ("expected", "expected_events"),
        ("delay p50 ms", "delay_p50_ms"), ("delay p99 ms", "delay_p99_ms"), ("delay max ms", "delay_max_ms"),
        ("events/message", "events_per_message"), ("exactly once, in order", "exactly_once_in_order"), ("put p99 ms", "write_p99_ms"),
        ("watcher CPU cores", "client_cpu_cores"), ("watcher CPU µs/event", "client_cpu_us_per_event"),
        ("server CPU cores", "server_cpu_cores"), ("servers CPU µs/event", "server_cpu_us_per_event"),
        ("loadavg", "loadavg")])
    finish(doc, out)


def add_parser(sub: Any, common: Any) -> None:
    p = sub.add_parser("watch", help="watch fan-out: events/s to 1..1000 watchers, delay from ack to delivery")
    common(p)
    p.add_argument("--watchers", type=lambda s: [int(x) for x in s.split(",") if x.strip()], default=[1, 100, 1000])
    p.add_argument("--rate", type=float, default=50.0, help="puts/s of the writer (default 50)")
    p.add_argument("--systems", default="raftkv,etcd")
    p.set_defaults(duration=10.0)
