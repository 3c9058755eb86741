"""Scale runs (throughput and p99 as key count, value size and cluster size grow; memory per key) and
catch-up of a restarted node after a large log / snapshot. Every run is bounded like the matrix."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .clusters import Cluster
from .load import preload, run_load
from .procstat import sample
from .runner import finish, measure, running_cluster, write_partial
from .spec import RunSpec

SCALE_MODES = ("write-majority", "read-linearizable")


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _extra(system: str) -> list[str] | None:
    return ["--lease-reads"] if system == "raftkv" else None


def _rss(cluster: Cluster) -> dict[int, int]:
    out = {}
    for i, pid in cluster.pids().items():
        s = sample(pid)
        if s is not None:
            out[i] = s.rss_bytes
    return out


def _spec_for(cluster: Cluster, base: RunSpec, **kw: Any) -> RunSpec:
    leader = cluster.leader_id()
    return replace(base, system=cluster.system, endpoints=cluster.endpoints(),
                   leader=cluster.nodes[leader].client_address, **kw)


def _table(rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> str:
    lines = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        cells = []
        for _, k in cols:
            v = r.get(k)
            if isinstance(v, bool):
                v = "yes" if v else "no"
            cells.append("-" if v is None else (f"{v:,.2f}" if isinstance(v, float) else
                                                (f"{v:,}" if isinstance(v, int) else str(v))))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _row(r: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"system": r["spec"]["system"], "mode": r["spec"]["mode"], "ops_s": round(r["throughput_ops_s"]),
            "p50_ms": r["latency"].get("p50_ms"), "p99_ms": r["latency"].get("p99_ms"),
            "errors": sum(r["errors"].values()), "elections": r.get("leader_changes", 0), "loadavg": r["loadavg_start"].split(" ")[0], **extra}


def note(doc: dict[str, Any], text: str) -> None:
    """Something a reader of the figures must know (a failed run, a bound that was hit)."""
    print(f"  NOTE: {text}", file=sys.stderr, flush=True)
    doc.setdefault("notes", []).append(text)
    notes = doc.setdefault("sections", {})
    notes["Notes"] = "\n".join(f"- {n}" for n in doc["notes"])


def scale_keys(doc: dict[str, Any], out: Path, a: argparse.Namespace, base: RunSpec, system: str) -> None:
    """One cluster, grown in steps (10k -> 100k -> 1M keys) by batched preloads; after each step the modes
    run over the whole key space. A step that cannot finish within --preload-timeout stops the growth."""
    rows = doc.setdefault("scale_keys", [])
    root = out / "data" / f"keys-{system}"
    with running_cluster(system, root, base.nodes, _extra(system)) as cluster:
        rss0 = _rss(cluster)
        loaded = 0
        for target in _ints(a.key_counts):
            spec = _spec_for(cluster, base, mode="write-majority")
            pre = preload(spec, target, a.preload_timeout, first=loaded)
            loaded += pre["keys_loaded"]
            rss = _rss(cluster)
            disk = {i: cluster.data_bytes(i) for i in cluster.nodes}
            mem = {"rss_mb": {i: round(v / 2**20, 1) for i, v in rss.items()},
                   "rss_bytes_per_key": {i: round((rss[i] - rss0.get(i, 0)) / loaded, 1) for i in rss} if loaded else {},
                   "disk_mb": {i: round(v / 2**20, 1) for i, v in disk.items()},
                   "disk_bytes_per_key": {i: round(v / loaded, 1) for i, v in disk.items()} if loaded else {}}
            print(f"  {system}: {loaded:,} keys; preload {pre['seconds']}s ({pre['keys_per_s']} keys/s); {mem}",
                  file=sys.stderr, flush=True)
            for mode in SCALE_MODES:
                try:
                    r = measure(cluster, replace(base, system=system, mode=mode, keys=loaded))
                except RuntimeError as e:
                    note(doc, f"{system}, {loaded:,} keys, {mode}: run failed: {e}")
                    continue
                doc["runs"].append(r)
                rows.append(_row(r, keys=loaded, preload_s=pre["seconds"], preload_keys_s=pre["keys_per_s"],
                                 complete=pre["complete"],
                                 rss_mb_per_node=" / ".join(str(v) for v in mem["rss_mb"].values()),
                                 rss_b_per_key=round(sum(mem["rss_bytes_per_key"].values()) / max(1, len(rss))),
                                 disk_b_per_key=round(sum(mem["disk_bytes_per_key"].values()) / max(1, len(disk)))))
            write_partial(doc, out)
            if not pre["complete"]:
                note(doc, f"{system}: preload to {target:,} keys did not finish within {a.preload_timeout}s; "
                          f"measured up to {loaded:,} keys")
                break


def scale_values(doc: dict[str, Any], out: Path, a: argparse.Namespace, base: RunSpec, system: str) -> None:
    rows = doc.setdefault("scale_values", [])
    keys = min(base.keys, 2000)  # bounded data: 2,000 keys x 64 KiB = 128 MiB
    for size in _ints(a.value_sizes):
        root = out / "data" / f"values-{system}-{size}"
        with running_cluster(system, root, base.nodes, _extra(system)) as cluster:
            sized = replace(base, system=system, value_size=size, keys=keys)
            pre = preload(_spec_for(cluster, sized, mode="write-majority"), keys, a.preload_timeout)
            for mode in SCALE_MODES:
                r = measure(cluster, replace(sized, mode=mode))
                doc["runs"].append(r)
                rows.append(_row(r, value_size=size, keys=pre["keys_loaded"],
                                 mb_s=round(r["throughput_ops_s"] * size / 2**20, 1)))
        write_partial(doc, out)


def scale_nodes(doc: dict[str, Any], out: Path, a: argparse.Namespace, base: RunSpec, system: str) -> None:
    rows = doc.setdefault("scale_nodes", [])
    for n in _ints(a.cluster_sizes):
        root = out / "data" / f"nodes-{system}-{n}"
        with running_cluster(system, root, n, _extra(system)) as cluster:
            sized = replace(base, system=system, nodes=n)
            preload(_spec_for(cluster, sized, mode="write-majority"), base.keys, a.preload_timeout)
            for mode in SCALE_MODES:
                r = measure(cluster, replace(sized, mode=mode))
                doc["runs"].append(r)
                rows.append(_row(r, nodes=n, leader_cpu_s_per_1k=next(
                    (x["cpu_s_per_1k_ops"] for x in r["nodes"] if x["leader"]), None)))
        write_partial(doc, out)


def run_scale(doc: dict[str, Any], out: Path, a: argparse.Namespace, base: RunSpec) -> None:
    what = [w.strip() for w in a.what.split(",") if w.strip()]
    systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    sections = doc.setdefault("sections", {})
    figures = doc.setdefault("figures", {})
    common = [("system", "system"), ("mode", "mode")]
    perf = [("ops/s", "ops_s"), ("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"), ("errors", "errors"),
            ("leader changes", "elections"),
            ("loadavg", "loadavg")]
    for w in what:
        for system in systems:
            print(f"scale {w}: {system}", file=sys.stderr, flush=True)
            {"keys": scale_keys, "values": scale_values, "nodes": scale_nodes}[w](doc, out, a, base, system)
        if w == "keys":
            rows = doc["scale_keys"]
            sections["Scale: key count"] = _table(rows, [("keys", "keys")] + common + perf + [
                ("preload s", "preload_s"), ("preload keys/s", "preload_keys_s"), ("RSS MB per node", "rss_mb_per_node"),
                ("RSS B/key", "rss_b_per_key"), ("disk B/key", "disk_b_per_key")])
            x = "keys"
        elif w == "values":
            rows = doc["scale_values"]
            sections["Scale: value size"] = _table(rows, [("value B", "value_size")] + common + perf + [
                ("MiB/s", "mb_s")])
            x = "value_size"
        else:
            rows = doc["scale_nodes"]
            sections["Scale: cluster size"] = _table(rows, [("nodes", "nodes")] + common + perf + [
                ("leader CPU s/1k ops", "leader_cpu_s_per_1k")])
            x = "nodes"
        for metric, label in (("ops_s", "operations / s"), ("p99_ms", "p99 latency (ms)")):
            series: dict[str, list[tuple[float, float]]] = {}
            for r in rows:
                series.setdefault(f"{r['system']} {r['mode']}", []).append((r[x], r[metric]))
            figures[f"scale_{w}_{metric}"] = {"series": series, "xlabel": x, "ylabel": label,
                                              "title": f"{label} vs {x}", "xscale": "linear" if w == "nodes" else "log"}
    finish(doc, out)


# ------------------------------------------------------------------------------------------ catch-up
def _caught_up(cluster: Cluster, node: int, target: int) -> bool:
    from .clusters import EtcdCluster, RaftkvCluster

    try:
        if isinstance(cluster, RaftkvCluster):
            return cluster.applied(node) >= target
        if isinstance(cluster, EtcdCluster):
            return cluster.revisions().get(node, 0) >= target
    except Exception:  # noqa: BLE001 - the node is still starting
        return False
    return False


def _position(cluster: Cluster, node: int) -> int:
    from .clusters import RaftkvCluster

    if isinstance(cluster, RaftkvCluster):
        return cluster.commit_index(node)
    return cluster.revisions()[node]


def run_catchup(doc: dict[str, Any], out: Path, a: argparse.Namespace, base: RunSpec) -> None:
    """Preload --keys keys, stop a follower, write --entries single-key writes (raftkv compacts its log into
    a snapshot every 10,000 entries, so the follower needs a snapshot of all keys plus the log tail),
    restart it and time until it has applied everything that was committed when it came back (the time
    includes the restarted process's start-up)."""
    rows = doc.setdefault("catchup", [])
    for system in [s.strip() for s in a.systems.split(",") if s.strip()]:
        root = out / "data" / f"catchup-{system}"
        with running_cluster(system, root, base.nodes, _extra(system)) as cluster:
            leader = cluster.leader_id()
            pre = preload(_spec_for(cluster, base, mode="write-majority"), base.keys, a.preload_timeout)
            cluster.leader_id()
            follower = next(i for i in sorted(cluster.nodes) if i != leader)
            cluster.stop_node(follower)
            spec = _spec_for(cluster, base, mode="write-majority", max_ops=a.entries, duration_s=600.0)
            t0 = time.monotonic()
            raw = run_load(spec, cluster.pids())
            write_s = time.monotonic() - t0
            target = _position(cluster, leader)
            t1 = time.monotonic()
            cluster.start_node(follower)
            deadline = t1 + 600
            while time.monotonic() < deadline and not _caught_up(cluster, follower, target):
                time.sleep(0.05)
            took = time.monotonic() - t1
            done = _caught_up(cluster, follower, target)
            log_text = cluster.nodes[follower].log_path.read_text(errors="replace") if cluster.nodes[follower].log_path else ""
            row = {"system": system, "keys": pre["keys_loaded"], "entries_written": raw["writes"], "write_s": round(write_s, 1),
                   "target_position": target, "catchup_s": round(took, 2) if done else None,
                   "caught_up": done, "snapshot_installed": "installed snapshot" in log_text if system == "raftkv" else None,
                   "data_mb_leader": round(cluster.data_bytes(leader) / 2**20, 1)}
            rows.append(row)
            print(f"  catch-up {row}", file=sys.stderr, flush=True)
    doc.setdefault("sections", {})["Catch-up of a restarted follower"] = _table(rows, [
        ("system", "system"), ("keys", "keys"), ("writes while down", "entries_written"), ("position to reach", "target_position"),
        ("catch-up s", "catchup_s"), ("caught up", "caught_up"), ("via snapshot", "snapshot_installed"),
        ("leader data MB", "data_mb_leader")])
    finish(doc, out)
