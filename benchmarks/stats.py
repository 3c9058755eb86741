"""Turning raw measurements into the figures of a run."""

from __future__ import annotations

from array import array
from typing import Any

from .spec import RunSpec

QUANTILES = (0.5, 0.9, 0.99, 0.999)
# Points kept for the latency CDF plot: dense in the tail, where the interesting differences are.
CDF_POINTS = [i / 100 for i in range(0, 100)] + [0.99 + i / 1000 for i in range(10)] + [0.999, 0.9999, 1.0]


def quantile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    idx = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return sorted_vals[idx]


def latency_summary(lat: array) -> dict[str, Any]:
    vals = sorted(lat)
    if not vals:
        return {"count": 0}
    ms = 1000.0
    return {
        "count": len(vals),
        "mean_ms": sum(vals) / len(vals) * ms,
        "p50_ms": quantile(vals, 0.5) * ms,
        "p90_ms": quantile(vals, 0.9) * ms,
        "p99_ms": quantile(vals, 0.99) * ms,
        "p999_ms": quantile(vals, 0.999) * ms,
        "max_ms": vals[-1] * ms,
        "cdf": [[quantile(vals, q) * ms, q] for q in CDF_POINTS],
    }


def summarize(spec: RunSpec, raw: dict[str, Any], leader_id: int | None) -> dict[str, Any]:
    ops = raw["reads"] + raw["writes"]
    elapsed = raw["elapsed_s"]
    nodes = []
    for i, before in sorted(raw["server_before"].items()):
        after = raw["server_after"].get(i)
        if before is None or after is None:
            continue
        cpu = after.cpu_s - before.cpu_s
        disk = _disk(raw.get("probe_before"), raw.get("probe_after"), i, ops, raw["window_s"])
        nodes.append({**disk, "id": i, "leader": i == leader_id, "cpu_s": round(cpu, 3),
                      "cpu_s_per_1k_ops": round(cpu / ops * 1000, 4) if ops else None,
                      "cpu_util": round(cpu / raw["window_s"], 3),
                      "rss_mb": round(after.rss_bytes / 2**20, 1), "peak_rss_mb": round(after.hwm_bytes / 2**20, 1)})
    lat = array("f")
    lat.extend(raw["read_lat"])
    lat.extend(raw["write_lat"])
    return {
        "spec": spec.to_dict(),
        "ops": ops, "reads": raw["reads"], "writes": raw["writes"], "errors": raw["errors"],
        "elapsed_s": round(elapsed, 3),
        "throughput_ops_s": round(ops / elapsed, 1) if elapsed else 0.0,
        "latency": latency_summary(lat),
        "read_latency": {k: v for k, v in latency_summary(raw["read_lat"]).items() if k != "cdf"},
        "write_latency": {k: v for k, v in latency_summary(raw["write_lat"]).items() if k != "cdf"},
        "nodes": nodes,
        "server_cpu_s_total": round(sum(n["cpu_s"] for n in nodes), 3),
        "leader_changes": max((n.get("leader_changes", 0) for n in nodes), default=0),
        "client_cpu_s": round(raw["client_cpu_s"], 3),
        "server_cores": round(sum(n["cpu_s"] for n in nodes) / raw["window_s"], 2),
        "client_cores": round(raw["client_cpu_s"] / elapsed, 2) if elapsed else None,
        "client_cpu_s_per_1k_ops": round(raw["client_cpu_s"] / ops * 1000, 4) if ops else None,
        "loadavg_start": raw["loadavg_start"], "loadavg_end": raw["loadavg_end"],
    }


def _disk(before: Any, after: Any, node: int, ops: int, window_s: float) -> dict[str, Any]:
    """Per disk series (raftkv: fsync of one Ready; etcd: WAL fsync, backend commit): how many, their mean
    duration, operations per fsync, and the share of the run's window spent in them (busy)."""
    if not before or not after or node not in before or node not in after:
        return {}
    out: dict[str, Any] = {}
    b, a = before[node], after[node]
    for name in a:
        if "leader_changes" in name:
            out["leader_changes"] = int(a[name] - b.get(name, 0.0))
            continue
        if not name.endswith("_count"):
            continue
        base = name.removesuffix("_count")
        n = a[name] - b.get(name, 0.0)
        secs = a.get(base + "_sum", 0.0) - b.get(base + "_sum", 0.0)
        short = base.replace("_duration_seconds", "").replace("raftkv_", "").replace("etcd_disk_", "")
        out[f"{short}_count"] = int(n)
        out[f"{short}_mean_ms"] = round(secs / n * 1000, 3) if n else None
        out[f"ops_per_{short}"] = round(ops / n, 1) if n else None
        out[f"{short}_busy"] = round(secs / window_s, 2) if window_s else None
    return out


def etcd_counterpart(mode: str) -> str:
    """The etcd mode a raftkv mode is compared with: etcd's one write path, its two read levels."""
    if mode.startswith("write-"):
        return "write-majority"
    if mode in ("read-serializable", "read-bounded_staleness", "read-session"):
        return "read-serializable"
    if mode.startswith("read-"):
        return "read-linearizable"
    return mode


def ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """raftkv / etcd for every raftkv run that has an etcd run of the same shape in the same results."""
    def shape(s: dict[str, Any]) -> tuple:
        return (s["concurrency"], s["nodes"], s["keys"], s["value_size"], s["key_size"])

    etcd = {(r["spec"]["mode"], *shape(r["spec"])): r for r in runs if r["spec"]["system"] == "etcd"}
    out = []
    for r in runs:
        s = r["spec"]
        if s["system"] != "raftkv":
            continue
        e = etcd.get((etcd_counterpart(s["mode"]), *shape(s)))
        if e is None or not e["throughput_ops_s"]:
            continue
        lat, elat = r["latency"], e["latency"]
        out.append({
            "raftkv": s["label"], "etcd": e["spec"]["label"], "concurrency": s["concurrency"],
            "nodes": s["nodes"], "keys": s["keys"], "value_size": s["value_size"],
            "throughput_ratio": round(r["throughput_ops_s"] / e["throughput_ops_s"], 3),
            "p50_ratio": round(lat["p50_ms"] / elat["p50_ms"], 3) if lat.get("count") and elat.get("count") else None,
            "p99_ratio": round(lat["p99_ms"] / elat["p99_ms"], 3) if lat.get("count") and elat.get("count") else None,
            "server_cpu_per_op_ratio": (round((r["server_cpu_s_total"] / r["ops"]) / (e["server_cpu_s_total"] / e["ops"]), 2)
                                        if r["ops"] and e["ops"] and e["server_cpu_s_total"] else None),
        })
    return out
