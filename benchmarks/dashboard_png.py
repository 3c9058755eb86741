"""The panels of deploy/grafana/raftkv-dashboard.json drawn with matplotlib from real scrapes of a real run
(Grafana itself is not installable here), for the README's picture of the dashboard.

A run: a 3-node raftkv cluster on loopback, a bounded load of writes and reads (and a few refused calls,
so that more than one status code shows), one follower stopped with SIGSTOP for a while (lag rises,
heartbeats to it fail) and leadership moved once; every node's /metrics scraped every `--interval`
seconds. The scrapes are kept (`--scrapes`, JSON lines) and can be drawn again (`--from-scrapes`).
Each panel computes what its PromQL computes (rates over a window of scrapes, histogram_quantile's
linear interpolation within a bucket), titled as in the dashboard JSON.

    .venv/bin/python -m benchmarks.dashboard_png --duration 60 --out deploy/grafana/raftkv-dashboard.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "raftkv-dashboard.json"
KEEP = ("raftkv_", "grpc_server_", "process_resident_memory_bytes")
WINDOW = 5
"""Scrapes a rate or quantile spans (the dashboard's [1m] on a shorter run)."""

Scrape = dict[str, Any]  # {"t": seconds since start, "node": id, "samples": [[name, labels, value], ...]}


# ------------------------------------------------------------------------------------------- the run
def _scrape(url: str) -> list[list[Any]]:
    with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - loopback
        text = r.read().decode()
    out = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith(KEEP) and not s.name.endswith("_created"):
                out.append([s.name, s.labels, s.value])
    return out


async def _load(endpoints: list[str], stop: threading.Event) -> None:
    from raftkv.client import RaftKVError
    from raftkv.client.async_client import AsyncClient

    async with AsyncClient(endpoints, timeout=5.0, batching=False) as c:
        async def writer(w: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    if n % 50 == 0:
                        await c.put(b"", b"refused: empty key")
                    elif n % 3 == 0:
                        await c.get(f"k{w}-{n - 1}".encode())
                    else:
                        await c.put(f"k{w}-{n}".encode(), b"v" * 256)
                except RaftKVError:
                    pass
                await asyncio.sleep(0.01)

        async def watcher() -> None:  # one watch on the writers' keys, so the watch panel has traffic
            try:
                async for _ in c.watch(b"k", prefix=True):
                    if stop.is_set():
                        return
            except RaftKVError:
                pass

        watching = asyncio.create_task(watcher())
        await asyncio.gather(*(writer(w) for w in range(8)))
        watching.cancel()


def _leases(endpoints: list[str], stop: threading.Event) -> None:
    """One lease kept alive the whole run, and every 4 s a 2 s lease left to expire (the lease panel)."""
    from raftkv.client import Client, RaftKVError

    with Client(endpoints, timeout=5.0) as c:
        kept = c.keep_alive(c.lease_grant(3).id, interval=1.0)
        try:
            while not stop.wait(4.0):
                try:
                    lid = c.lease_grant(2).id
                    c.put(b"session/%d" % lid, b"up", lease=lid)
                except RaftKVError:
                    pass
        finally:
            kept.stop()


def record(duration: float, interval: float) -> list[Scrape]:
    """Run the scenario above and return every scrape."""
    from raftkv.client import Client

    from .clusters import RaftkvCluster

    scrapes: list[Scrape] = []
    with tempfile.TemporaryDirectory(prefix="raftkv-dashboard-") as tmp:
        cluster = RaftkvCluster(Path(tmp), 3, ["--lag-critical-seconds", "2"]).start()
        stop = threading.Event()
        load = threading.Thread(target=lambda: asyncio.run(_load(cluster.endpoints(), stop)), daemon=True)
        leases = threading.Thread(target=_leases, args=(cluster.endpoints(), stop), daemon=True)
        t0 = time.monotonic()
        load.start()
        leases.start()
        stopped: int | None = None
        moved = False
        try:
            while (now := time.monotonic() - t0) < duration:
                for i, n in sorted(cluster.nodes.items()):
                    try:
                        scrapes.append({"t": round(now, 2), "node": i, "samples": _scrape(n.metrics_url)})
                    except OSError:
                        pass  # a stopped node answers no scrape, as Prometheus would see it
                if stopped is None and now >= duration * 0.3:
                    leader = cluster.leader_id()
                    stopped = next(i for i in sorted(cluster.nodes) if i != leader)
                    os.kill(cluster.nodes[stopped].pid, signal.SIGSTOP)
                elif stopped is not None and stopped > 0 and now >= duration * 0.45:
                    os.kill(cluster.nodes[stopped].pid, signal.SIGCONT)
                    stopped = -stopped
                elif not moved and now >= duration * 0.7:
                    leader = cluster.leader_id()
                    target = next(i for i in sorted(cluster.nodes) if i != leader)
                    with Client(cluster.endpoints(), timeout=10) as c:
                        c.transfer_leader(target)
                    moved = True
                time.sleep(max(0.0, interval - (time.monotonic() - t0 - now)))
        finally:
            if stopped is not None and stopped > 0:
                os.kill(cluster.nodes[stopped].pid, signal.SIGCONT)
            stop.set()
            load.join(10)
            leases.join(10)
            cluster.stop()
    return scrapes


# ------------------------------------------------------------------------------- PromQL, by hand
class Series:
    """Scrapes indexed for the panels: values of one metric by node and label set over time."""

    def __init__(self, scrapes: list[Scrape]) -> None:
        self.times = sorted({s["t"] for s in scrapes})
        self.by: dict[str, dict[tuple[int, tuple[tuple[str, str], ...]], list[tuple[float, float]]]] = \
            defaultdict(lambda: defaultdict(list))
        for s in scrapes:
            for name, labels, value in s["samples"]:
                self.by[name][(s["node"], tuple(sorted(labels.items())))].append((s["t"], value))

    def gauge(self, name: str, **match: str) -> dict[tuple[int, dict[str, str]], list[tuple[float, float]]]:
        out = {}
        for (node, labels), pts in self.by.get(name, {}).items():
            d = dict(labels)
            if all(d.get(k) == v for k, v in match.items()):
                out[(node, tuple(sorted(d.items())))] = pts
        return out  # type: ignore[return-value]

    def rate(self, name: str, by: Callable[[int, dict[str, str]], str], **match: str) -> dict[str, list]:
        """sum by (...) (rate(name[WINDOW scrapes])): per-second increase, summed over the series of a key."""
        sums: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
        for (node, labels), pts in self.gauge(name, **match).items():
            key = by(node, dict(labels))
            for j in range(WINDOW, len(pts)):
                (t_a, a), (t_b, b) = pts[j - WINDOW], pts[j]
                if t_b > t_a:
                    sums[key][t_b] += max(0.0, b - a if b >= a else b) / (t_b - t_a)
        return {k: sorted(v.items()) for k, v in sums.items()}

    def quantile(self, q: float, name: str, by: Callable[[int, dict[str, str]], str], **match: str
                 ) -> dict[str, list]:
        """histogram_quantile(q, sum by (le, ...) (rate(name_bucket[WINDOW scrapes])))."""
        inc: dict[str, dict[float, dict[float, float]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(float)))
        for (node, labels), pts in self.gauge(f"{name}_bucket", **match).items():
            d = dict(labels)
            le = float(d.pop("le"))
            key = by(node, d)
            for j in range(WINDOW, len(pts)):
                # Scrapes of one node share their times; bucket them by the later scrape's time.
                inc[key][round(pts[j][0])][le] += max(0.0, pts[j][1] - pts[j - WINDOW][1])
        out: dict[str, list] = {}
        for key, per_t in inc.items():
            line = []
            for t, buckets in sorted(per_t.items()):
                v = _histogram_quantile(q, sorted(buckets.items()))
                if v is not None:
                    line.append((t, v))
            if line:
                out[key] = line
        return out


def _histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus's histogram_quantile over cumulative (le, count) pairs, +Inf last."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le  # the highest finite bound, as Prometheus answers
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


# ------------------------------------------------------------------------------------------ panels
def _leader_of(s: Series) -> dict[float, int]:
    """Which node led at each scrape time (raftkv_is_leader == 1)."""
    out: dict[float, int] = {}
    for (node, _), pts in s.gauge("raftkv_is_leader").items():
        for t, v in pts:
            if v == 1:
                out[round(t)] = node
    return out


def _on_leader(s: Series, name: str) -> dict[str, list]:
    """name{peer} and on (instance) (raftkv_is_leader == 1)."""
    leader = _leader_of(s)
    out: dict[str, list] = defaultdict(list)
    for (node, labels), pts in s.gauge(name).items():
        peer = dict(labels).get("peer", "?")
        out[peer] += [(t, v) for t, v in pts if leader.get(round(t)) == node]
    return {f"follower {k}": sorted(v) for k, v in out.items() if v}


def _per_node(s: Series, name: str, label: str = "", **match: str) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for (node, _labels), pts in s.gauge(name, **match).items():
        out[f"{label}node {node}".strip()] += pts
    return {k: sorted(v) for k, v in out.items()}


def panels(s: Series) -> dict[str, tuple[list[dict[str, list]], str]]:
    """Dashboard panel title -> (its lines, one dict of legend -> points per query; unit)."""
    unary = {"grpc_type": "unary"}
    by_mc = lambda _n, d: f"{d['grpc_method']} {d['grpc_code']}"  # noqa: E731
    first: dict[int, float] = {}
    changes: dict[str, list] = {}
    for (node, _), pts in s.gauge("raftkv_leader_changes_total").items():
        first[node] = pts[0][1]
        changes[f"node {node}"] = [(t, v - first[node]) for t, v in pts]
    return {
        "Leader and term": ([_per_node(s, "raftkv_is_leader", "leader: "), _per_node(s, "raftkv_term", "term: ")],
                            "short"),
        "Leader changes (1 h)": ([changes], "short"),
        "Requests by method and code": ([s.rate("grpc_server_handled_total", by_mc, **unary)], "req/s"),
        "Request latency by method and code": (
            [{f"p99 {k}": v for k, v in s.quantile(0.99, "grpc_server_handling_seconds", by_mc, **unary).items()},
             {f"p50 {k}": v for k, v in s.quantile(0.5, "grpc_server_handling_seconds", by_mc, **unary).items()}],
            "s"),
        "fsync latency": (
            [{f"p99 node {k}": v for k, v in s.quantile(0.99, "raftkv_fsync_duration_seconds", lambda n, _: str(n)).items()},
             {f"p50 node {k}": v for k, v in s.quantile(0.5, "raftkv_fsync_duration_seconds", lambda n, _: str(n)).items()}],
            "s"),
        "Peer round trip (leader to follower)": (
            [{f"p99 {k}": v for k, v in s.quantile(0.99, "raftkv_peer_round_trip_time_seconds",
                                                   lambda n, d: f"{n} to {d['peer']}").items()}], "s"),
        "Follower lag (entries)": ([_on_leader(s, "raftkv_replication_lag_entries")], "entries"),
        "Follower lag (seconds)": ([{f"flush lag {k}": v for k, v in _on_leader(s, "raftkv_replication_lag_seconds").items()},
                                    {f"replay lag {k}": v for k, v in
                                     _on_leader(s, "raftkv_replication_replay_lag_seconds").items()}], "s"),
        "Commit and applied index": ([_per_node(s, "raftkv_commit_index", "commit "),
                                      _per_node(s, "raftkv_applied_index", "applied ")], "index"),
        "Proposals": ([{f"applied/s {k}": v for k, v in s.rate("raftkv_proposals_applied_total",
                                                               lambda n, _: f"node {n}").items()},
                       {f"failed/s {k}": v for k, v in s.rate("raftkv_proposals_failed_total",
                                                              lambda n, _: f"node {n}").items()}], "per s"),
        "Database size": ([_per_node(s, "raftkv_db_total_size_bytes", "file "),
                           _per_node(s, "raftkv_db_total_size_in_use_bytes", "in use ")], "bytes"),
        "Memory (RSS)": ([_per_node(s, "process_resident_memory_bytes")], "bytes"),
        "Alarms and semi-sync": ([{f"alarm {dict(lb)['type']} node {n}": pts for (n, lb), pts in
                                   s.gauge("raftkv_alarm").items()},
                                  _per_node(s, "raftkv_semi_sync_degraded", "semi-sync degraded ")], "short"),
        "Pressure (0 GREEN, 1 YELLOW, 2 RED)": ([_per_node(s, "raftkv_pressure_level")], "level"),
        "Watches": ([_per_node(s, "raftkv_watches", "open "),
                     {f"sent/s {k}": v for k, v in s.rate("raftkv_watch_events_sent_total",
                                                          lambda n, _: f"node {n}").items()},
                     _per_node(s, "raftkv_watch_events_queued", "queued ")], "short"),
        "Leases": ([_per_node(s, "raftkv_leases", "live "),
                    {f"keep-alives/s {k}": v for k, v in s.rate("raftkv_lease_keepalives_total",
                                                                lambda n, _: f"node {n}").items()},
                    {f"expired/s {k}": v for k, v in s.rate("raftkv_lease_expired_total",
                                                            lambda n, _: f"node {n}").items()}], "short"),
    }


def render(scrapes: list[Scrape], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = [p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    drawn = panels(Series(scrapes))
    assert set(titles) == set(drawn), f"dashboard and drawing disagree: {set(titles) ^ set(drawn)}"
    cols = 2
    rows = math.ceil(len(titles) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(14, 2.6 * rows), constrained_layout=True)
    for ax, title in zip(axes.flat, titles, strict=False):
        queries, unit = drawn[title]
        lines = 0
        for query, style in zip(queries, ("-", "--", ":"), strict=False):
            for legend, pts in sorted(query.items()):
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=legend, linewidth=1.2)
                    lines += 1
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(fontsize=6, loc="upper left", ncol=2 if lines > 4 else 1)
        else:
            ax.text(0.5, 0.5, "no series on this build", ha="center", va="center", transform=ax.transAxes,
                    fontsize=9, color="gray")
    for ax in list(axes.flat)[len(titles):]:
        ax.axis("off")
    for ax in axes.flat[-cols:]:
        ax.set_xlabel("seconds into the run", fontsize=8)
    fig.suptitle("raftkv dashboard (deploy/grafana/raftkv-dashboard.json) drawn from a real run: "
                 "3 nodes, load, a follower stopped 30-45 %, leadership moved at 70 %", fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=60)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=ROOT / "deploy" / "grafana" / "raftkv-dashboard.png")
    ap.add_argument("--scrapes", type=Path, default=ROOT / "results" / "dashboard-scrapes.jsonl",
                    help="Where the scrapes are written (JSON lines).")
    ap.add_argument("--from-scrapes", type=Path, help="Draw these scrapes instead of running.")
    a = ap.parse_args()
    if a.from_scrapes:
        scrapes = [json.loads(line) for line in a.from_scrapes.read_text().splitlines() if line]
    else:
        scrapes = record(a.duration, a.interval)
        a.scrapes.parent.mkdir(parents=True, exist_ok=True)
        a.scrapes.write_text("".join(json.dumps(s) + "\n" for s in scrapes))
        print(f"{len(scrapes)} scrapes written to {a.scrapes}")
    render(scrapes, a.out)
    print(f"dashboard drawn to {a.out}")


if __name__ == "__main__":
    main()
