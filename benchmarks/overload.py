"""Overload: offered load from 1x to 8x a cluster's peak, raftkv (admission control) and etcd (none).

Per system (raftkv; raftkv-nodelay, raftkv without the queue-delay mark; etcd), value size and client
path (unary: one Put per call; batch: `--batch` puts per KV.Batch, or per etcd Txn), on a fresh 3-node
cluster:
1. the peak: a closed loop at each of `--peak-concurrency` (batch: `--batch-concurrency`) calls outstanding
   for `--duration`. The *peak* is the best goodput; *p99 at peak* is the p99 of the smallest concurrency
   that reaches 90 % of it (the knee: the peak rate with the least queueing);
2. per factor in `--factors`, an open loop offering factor x peak operations per second for `--duration`
   (overload_load.py): goodput and its share of the peak, p99 of the accepted calls and its ratio to the
   p99 at peak, the share refused, leader RSS every 0.2 s, leader changes, and the recovery time (from
   the end of the load until a lone write is answered within 4x its idle latency, >= 25 ms);
3. with `--stop-follower S`, one more phase at the top factor: a follower SIGSTOPped for S seconds under
   the load, then SIGCONT, and the seconds until it has applied what the leader had committed.
Writes `overload.png` (goodput and leader RSS against offered load, and RSS over time at the top
factor). Never part of `make test`; bounded: configs x (peak runs + factors + stop phase) x duration."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from .overload_load import RssSampler, Target, closed_loop, idle_latency_ms, open_loop
from .runner import finish, running_cluster
from .scale import _table, note

NO_DELAY = "raftkv-nodelay"
"""raftkv with the queue-delay mark off (`--overload-max-queue-delay-ms=0`): only the count and byte marks."""


def _leader_changes(c: Any, system: str, among: list[int]) -> int:
    """Leader changes seen so far (the highest count among the running members `among`)."""
    if system == "raftkv":
        from raftkv.client import RaftKVError

        for _ in range(10):  # Status may time out on a node still busy with the load's backlog
            try:
                return max(c._status(i).leader_changes for i in among)
            except RaftKVError:
                time.sleep(0.5)
        return -1
    best = 0
    for i in among:
        try:
            with urllib.request.urlopen(c.nodes[i].metrics_url, timeout=5) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith("etcd_server_leader_changes_seen_total"):
                        best = max(best, int(float(line.split()[-1])))
        except OSError:
            pass
    return best


def _handled_ok(c: Any, leader: int, method: str) -> dict[float, float]:
    """The leader's cumulative histogram of handler time of `method` calls answered OK
    (grpc_server_handling_seconds: from the handler's start, so the time a call waits before it is not in)."""
    want = f'grpc_code="OK",grpc_method="{method}"'
    out: dict[float, float] = {}
    try:
        with urllib.request.urlopen(c.nodes[leader].metrics_url, timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("grpc_server_handling_seconds_bucket") and want in line:
                    le = line.split('le="')[1].split('"')[0]
                    out[float("inf") if le == "+Inf" else float(le)] = float(line.split()[-1])
    except OSError:
        pass
    return out


def _server_p99_ms(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The bucket bound under which 99 % of the calls between the two scrapes were handled (None: none)."""
    delta = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    if not delta or delta[-1][1] <= 0:
        return None
    need = 0.99 * delta[-1][1]
    return next(le * 1000 for le, n in delta if n >= need)


def _caught_up(c: Any, system: str, leader: int, follower: int, timeout: float = 120) -> float | None:
    """Seconds until `follower` has applied what `leader` had committed when asked (None: not in time)."""
    t0 = time.monotonic()
    if system == "raftkv":
        from raftkv.client import RaftKVError

        target = None
        while time.monotonic() - t0 < timeout:
            try:
                target = c.commit_index(leader) if target is None else target
                if c.applied(follower) >= target:
                    return round(time.monotonic() - t0, 2)
            except RaftKVError:
                pass
            time.sleep(0.1)
        return None
    target = c.revisions()[leader]
    while time.monotonic() - t0 < timeout:
        try:
            if c.revisions().get(follower, 0) >= target:
                return round(time.monotonic() - t0, 2)
        except (RuntimeError, ValueError, OSError):
            pass
        time.sleep(0.1)
    return None


def _peak(target: Target, address: str, concurrencies: list[int], seconds: float) -> dict[str, Any]:
    runs = [asyncio.run(closed_loop(target, address, n, seconds)) for n in concurrencies]
    best = max(r["ops_s"] for r in runs)
    knee = next(r for r in runs if r["ops_s"] >= 0.9 * best)
    return {"peak_ops_s": best, "peak_p99_ms": knee["p99_ms"], "knee_concurrency": knee["concurrency"],
            "peak_runs": runs}


def run_config(doc: dict[str, Any], out: Path, a: argparse.Namespace, system: str, client: str, size: int) -> None:
    rows: list[dict[str, Any]] = doc.setdefault("overload", [])
    batch = 1 if client == "unary" else max(1, min(a.batch, a.max_batch_bytes // max(1, size)))
    label = f"{system} {client}{f' x{batch}' if batch > 1 else ''} {size} B"
    extra = None
    if system.startswith("raftkv"):
        extra = ["--overload-max-queue-delay-ms=0"] if system == NO_DELAY else []  # --raftkv-flag: clusters.py
    kind = "raftkv" if system.startswith("raftkv") else system
    target = Target(kind, client, size, batch)
    with running_cluster(kind, out / "data" / f"overload-{system}-{client}-{size}", a.nodes, extra) as c:
        leader = c.leader_id()
        address = c.nodes[leader].client_address
        pid = c.nodes[leader].pid
        members = sorted(c.nodes)
        idle_ms = asyncio.run(idle_latency_ms(target, address))
        probe_ok_ms = max(25.0, 4 * idle_ms)
        conc = a.peak_concurrency if client == "unary" else a.batch_concurrency
        peak = _peak(target, address, conc, a.duration)
        print(f"  {label}: peak {peak['peak_ops_s']} ops/s, p99 at peak {peak['peak_p99_ms']} ms "
              f"(c={peak['knee_concurrency']}); idle write {idle_ms:.1f} ms", file=sys.stderr, flush=True)
        base = {"system": system, "client": client, "value_bytes": size, "batch": batch, "config": label,
                **{k: v for k, v in peak.items() if k != "peak_runs"}}
        doc.setdefault("overload_peaks", []).append({**base, "peak_runs": peak["peak_runs"], "idle_write_ms": idle_ms})
        phases: list[tuple[float, int | None]] = [(f, None) for f in a.factors]
        if a.stop_follower:
            phases.append((max(a.factors), next(i for i in members if i != leader)))
        for factor, stopped in phases:
            running = [i for i in members if i != stopped]
            changes0 = _leader_changes(c, kind, running)
            seconds = a.stop_follower if stopped is not None else a.duration
            rss = RssSampler(pid, time.monotonic())
            handled0 = _handled_ok(c, leader, "Put") if kind == "raftkv" and client == "unary" else {}
            if stopped is not None:
                os.kill(c.nodes[stopped].pid, signal.SIGSTOP)
            try:
                row = asyncio.run(open_loop(target, address, peak["peak_ops_s"] * factor, seconds,
                                            a.max_in_flight, rss, probe_ok_ms))
            finally:
                if stopped is not None:
                    os.kill(c.nodes[stopped].pid, signal.SIGCONT)
            if stopped is not None:
                row["follower_catchup_s"] = _caught_up(c, kind, leader, stopped)
            series = rss.series
            if handled0:
                row["server_p99_ms"] = _server_p99_ms(handled0, _handled_ok(c, leader, "Put"))
            row.update(base, factor=factor, follower_stopped=stopped is not None,
                       goodput_of_peak=round(row["goodput_ops_s"] / peak["peak_ops_s"], 2) if peak["peak_ops_s"] else None,
                       p99_of_peak=round(row["p99_ms"] / peak["peak_p99_ms"], 2) if row["p99_ms"] and peak["peak_p99_ms"] else None,
                       rss_max_mb=round(max(s for _, s in series) / 1e6, 1) if series else None,
                       rss_end_mb=round(series[-1][1] / 1e6, 1) if series else None, rss_series=series,
                       leader_changes=_leader_changes(c, kind, members) - changes0,
                       crashed=[i for i in members if not c.nodes[i].alive()])
            if row["crashed"]:
                note(doc, f"{label}: node(s) {row['crashed']} died at {factor}x")
            rows.append(row)
            print(f"  {label} {factor}x{' follower stopped' if stopped else ''}: "
                  f"{json.dumps({k: v for k, v in row.items() if k not in ('rss_series', *base)})}",
                  file=sys.stderr, flush=True)


def run_overload(doc: dict[str, Any], out: Path, a: argparse.Namespace) -> None:
    for size in a.value_sizes or [a.value_size]:
        for client in a.clients:
            for system in a.systems:
                run_config(doc, out, a, system, client, size)
                _report(doc, out)
    finish(doc, out)


def _report(doc: dict[str, Any], out: Path) -> None:
    rows = doc.get("overload", [])
    _plot(rows, out)
    doc.setdefault("sections", {})["Overload: peaks (closed loop)"] = _table(doc.get("overload_peaks", []), [
        ("config", "config"), ("peak ops/s", "peak_ops_s"), ("p99 at peak ms", "peak_p99_ms"),
        ("knee concurrency", "knee_concurrency"), ("idle write ms", "idle_write_ms")])
    doc["sections"]["Overload: offered load (open loop)"] = _table(rows, [
        ("config", "config"), ("factor", "factor"), ("follower stopped", "follower_stopped"),
        ("offered ops/s", "offered_ops_s"), ("sent ops/s", "sent_ops_s"), ("goodput ops/s", "goodput_ops_s"),
        ("goodput / peak", "goodput_of_peak"), ("refused share", "refused_share"), ("p99 accepted ms", "p99_ms"),
        ("p99 / p99 at peak", "p99_of_peak"),
        ("server p99 ms (handler, unary)", "server_p99_ms"), ("leader RSS max MB", "rss_max_mb"), ("RSS at end MB", "rss_end_mb"),
        ("leader CPU", "leader_cpu"), ("harness CPU", "harness_cpu"), ("leader changes", "leader_changes"), ("other errors", "other_errors"), ("recovery s", "recovery_s"),
        ("follower catch-up s", "follower_catchup_s"), ("not offered (harness cap)", "not_offered_ops")])


def _plot(rows: list[dict[str, Any]], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (g, m, t) = plt.subplots(1, 3, figsize=(15, 4.5))
    for config in dict.fromkeys(r["config"] for r in rows):
        base = [r for r in rows if r["config"] == config and not r["follower_stopped"]]
        g.plot([r["factor"] for r in base], [r["goodput_of_peak"] or 0 for r in base], marker="o", label=config)
        m.plot([r["factor"] for r in base], [r["rss_max_mb"] or 0 for r in base], marker="o", label=config)
        if base:
            top = max(base, key=lambda r: r["factor"])
            t.plot([s for s, _ in top["rss_series"]], [b / 1e6 for _, b in top["rss_series"]], label=config)
    g.set_xlabel("offered load (x peak)")
    g.set_ylabel("goodput / peak")
    g.axhline(0.9, color="grey", linestyle=":")
    m.set_xlabel("offered load (x peak)")
    m.set_ylabel("leader RSS max (MB)")
    t.set_xlabel("seconds (top factor, load then recovery)")
    t.set_ylabel("leader RSS (MB)")
    g.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "overload.png")
    plt.close(fig)


def add_parser(sub: Any, common: Any) -> None:
    ov = sub.add_parser("overload", help="offered load 1x..8x the peak: goodput, p99, refusals, leader RSS; etcd too")
    common(ov)

    def floats(s: str) -> list[float]:
        return [float(x) for x in s.split(",")]

    def ints(s: str) -> list[int]:
        return [int(x) for x in s.split(",")]

    def strs(s: str) -> list[str]:
        return [x.strip() for x in s.split(",") if x.strip()]

    ov.add_argument("--factors", type=floats, default=[1.0, 2.0, 4.0, 8.0])
    ov.add_argument("--systems", type=strs, default=["raftkv", "etcd"],
                    help=f"raftkv,{NO_DELAY},etcd ({NO_DELAY}: raftkv without the queue-delay mark)")
    ov.add_argument("--clients", type=strs, default=["unary", "batch"], help="unary,batch")
    ov.add_argument("--value-sizes", type=ints, default=None, help="e.g. 256,65536 (default: --value-size)")
    ov.add_argument("--batch", type=int, default=64, help="puts per batch call (fewer for large values)")
    ov.add_argument("--max-batch-bytes", type=int, default=1 << 20, help="value bytes per batch call at most")
    ov.add_argument("--peak-concurrency", type=ints, default=[16, 64, 256], help="unary calls outstanding")
    ov.add_argument("--batch-concurrency", type=ints, default=[2, 8, 32], help="batch calls outstanding")
    ov.add_argument("--max-in-flight", type=int, default=4000, help="the harness's own bound on outstanding calls")
    ov.add_argument("--stop-follower", type=float, default=0.0,
                    help="seconds a follower is SIGSTOPped in one more phase at the top factor (0: none)")
