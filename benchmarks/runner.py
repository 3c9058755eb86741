"""Running a set of workloads against one system's cluster, and a whole matrix against both systems."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from .clusters import Cluster, etcd_version, make_cluster
from .load import preload, run_load
from .procstat import loadavg
from .report import write
from .spec import ETCD_MODES, RunSpec
from .stats import ratios, summarize

REPO = Path(__file__).resolve().parent.parent


def results_dir(base: str | Path = "results") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out = Path(base) / f"bench-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO,
                              timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def new_doc(argv: list[str]) -> dict[str, Any]:
    return {"meta": {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "command": "python -m benchmarks " + shlex.join(argv),
                     "cpus": os.cpu_count(), "machine": " ".join(os.uname()[2:5]), "python": sys.version.split()[0],
                     "raftkv_commit": git_sha(), "loadavg_start": loadavg()},
            "runs": []}


def finish(doc: dict[str, Any], out: Path) -> None:
    doc["meta"]["loadavg_end"] = loadavg()
    doc["ratios"] = ratios(doc["runs"])
    write(doc, out)


@contextmanager
def running_cluster(system: str, root: Path, nodes: int, extra: list[str] | None = None) -> Iterator[Cluster]:
    """A fresh cluster for the duration of the block; its data (not its logs) is deleted afterwards (unless
    BENCH_KEEP_DATA is set), since scale runs leave gigabytes behind."""
    c = make_cluster(system, root, nodes, extra)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        if not os.environ.get("BENCH_KEEP_DATA"):
            for i in c.nodes:  # the node logs stay, for a look at what happened
                shutil.rmtree(root / f"node{i}", ignore_errors=True)


def print_summary(r: dict[str, Any]) -> None:
    lat = r["latency"]
    errs = sum(r["errors"].values())
    cpu = " ".join(f"{'*' if n['leader'] else ''}n{n['id']}={n['cpu_s_per_1k_ops']}" for n in r["nodes"])
    lead = next((n for n in r["nodes"] if n["leader"]), {})
    disk = " ".join(f"{k}={v}" for k, v in lead.items() if k.endswith("_mean_ms") or k.startswith("ops_per_"))
    print(f"  {r['spec']['label']:<42} c={r['spec']['concurrency']:<4} {r['throughput_ops_s']:>9,.0f} ops/s  "
          f"p50 {lat.get('p50_ms', 0):7.2f}  p99 {lat.get('p99_ms', 0):7.2f}  p99.9 {lat.get('p999_ms', 0):7.2f} ms  "
          f"err {errs}  cpu s/1k ops {cpu}  client {r['client_cpu_s_per_1k_ops']}  leader disk: {disk}", file=sys.stderr, flush=True)


def measure(cluster: Cluster, spec: RunSpec) -> dict[str, Any]:
    """One bounded run against a running cluster."""
    leader = cluster.leader_id()
    spec = replace(spec, endpoints=cluster.endpoints(), leader=cluster.nodes[leader].client_address,
                   nodes=len(cluster.nodes))
    raw = run_load(spec, cluster.pids(), probe=cluster.disk_metrics)
    r = summarize(spec, raw, leader)
    print_summary(r)
    return r


def plan_matrix(modes: list[str], sweep_modes: list[str], concurrencies: list[int], all_modes_at: list[int],
                unary_modes: list[str], client: str) -> list[tuple[str, int, str]]:
    """(mode, concurrency, raftkv client path) of every run: the sweep modes at every concurrency, every
    other mode at each of `all_modes_at` (at the highest concurrency if none of them is asked for), so a
    low-concurrency figure of every ack and read level is always measured; `unary_modes` at every
    concurrency through the one-RPC-per-operation path."""
    top = max(concurrencies)
    some = [c for c in concurrencies if c in all_modes_at] or [top]
    plan = [(mode, c, client) for mode in modes for c in (concurrencies if mode in sweep_modes else some)]
    if client != "unary":
        plan += [(mode, c, "unary") for mode in unary_modes for c in concurrencies]
    return plan


def run_matrix(doc: dict[str, Any], out: Path, systems: list[str], base: RunSpec, modes: list[str],
               sweep_modes: list[str], concurrencies: list[int], preload_timeout_s: float = 600.0,
               unary_modes: list[str] | None = None, all_modes_at: list[int] | None = None) -> None:
    """The runs of `plan_matrix`. Each system gets one fresh cluster, preloaded with `base.keys` keys, and
    the clusters run side by side (an idle cluster costs only its heartbeats): each workload runs on one
    system, then at once on the other, so a change in the machine's background load falls on both rather
    than on whichever system ran later. etcd runs the modes it has (one RPC per operation: its rows stand
    beside both raftkv client paths); the gRPC floor (`floor`, benchmarks/floor_server.py) runs beside
    raftkv's unary path only."""
    with ExitStack() as stack:
        clusters: dict[str, Cluster] = {}
        for system in systems:
            root = out / "data" / system
            extra = ["--lease-reads"] if system == "raftkv" else None
            print(f"{system}: starting {base.nodes} nodes in {root}", file=sys.stderr, flush=True)
            cluster = stack.enter_context(running_cluster(system, root, base.nodes, extra))
            clusters[system] = cluster
            if system == "floor":
                cluster.leader_id()
                continue  # nothing to preload: its methods do nothing
            if system == "etcd":
                doc["meta"]["etcd_version"] = etcd_version()
            leader = cluster.leader_id()
            pre_spec = replace(base, system=system, mode="write-majority", endpoints=cluster.endpoints(),
                               leader=cluster.nodes[leader].client_address)
            pre = preload(pre_spec, base.keys, preload_timeout_s)
            doc.setdefault("preload", {})[system] = pre
            print(f"  preloaded {pre['keys_loaded']:,} keys in {pre['seconds']:.1f}s", file=sys.stderr, flush=True)
        plan = plan_matrix(modes, sweep_modes, concurrencies, all_modes_at or concurrencies,
                           unary_modes or [] if "raftkv" in clusters else [], base.client)
        for mode, c, client in plan:
            for system, cluster in clusters.items():
                if system == "etcd" and (mode not in ETCD_MODES or client != base.client):
                    continue
                if system == "floor" and (mode not in ETCD_MODES or client != "unary"):
                    continue
                spec = replace(base, system=system, mode=mode, concurrency=c, client=client)
                doc["runs"].append(measure(cluster, spec))
            write_partial(doc, out)
    finish(doc, out)


def write_partial(doc: dict[str, Any], out: Path) -> None:
    doc["ratios"] = ratios(doc["runs"])
    write(doc, out)
