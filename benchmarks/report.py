"""Writing a results folder: results.json (everything), results.md (tables), and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _f(x: Any, nd: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def disk_cell(nodes: list[dict[str, Any]]) -> str:
    """The leader's log fsyncs (raftkv: one per Ready; etcd: WAL), their mean time and operations each."""
    lead = next((n for n in nodes if n["leader"]), None)
    if not lead:
        return "-"
    for name in ("fsync", "wal_fsync"):
        if lead.get(f"{name}_mean_ms") is not None:
            busy = lead.get(f"{name}_busy")
            return f"{lead[f'{name}_mean_ms']:.2f} x {lead[f'ops_per_{name}']:.1f}" + (
                f", {busy:.0%}" if busy is not None else "")
    return "-"


def runs_table(runs: list[dict[str, Any]]) -> str:
    head = ("| run | conc | nodes | keys | value B | ops/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | elections "
            "| server CPU s/1k ops (per node) | client CPU s/1k ops | cores used: servers + clients "
            "| leader fsync: mean ms x ops each, busy "
            "| RSS MB (per node) | loadavg |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in runs:
        s, lat = r["spec"], r["latency"]
        nodes = r["nodes"]
        cpu = " / ".join(("*" if n["leader"] else "") + _f(n["cpu_s_per_1k_ops"], 3) for n in nodes)
        rss = " / ".join(_f(n["rss_mb"], 0) for n in nodes)
        errs = sum(r["errors"].values())
        lines.append(f"| {s['label']} | {s['concurrency']} | {s['nodes']} | {_f(s['keys'])} | {_f(s['value_size'])} "
                     f"| {_f(r['throughput_ops_s'], 0)} | {_f(lat.get('p50_ms'), 2)} | {_f(lat.get('p90_ms'), 2)} "
                     f"| {_f(lat.get('p99_ms'), 2)} | {_f(lat.get('p999_ms'), 2)} | {errs} | {r.get('leader_changes', 0)} | {cpu} "
                     f"| {_f(r['client_cpu_s_per_1k_ops'], 3)} | {_f(r.get('server_cores'), 2)} + "
                     f"{_f(r.get('client_cores'), 2)} | {disk_cell(nodes)} | {rss} | {r['loadavg_start'].split(' ')[0]} |")
    return "\n".join(lines)


def ratio_table(ratios: list[dict[str, Any]]) -> str:
    if not ratios:
        return "_no etcd run of the same shape in these results_"
    head = "| raftkv run | vs etcd run | conc | ops/s ratio | p50 ratio | p99 ratio | server CPU/op ratio |"
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for q in ratios:
        lines.append(f"| {q['raftkv']} | {q['etcd']} | {q['concurrency']} | {_f(q['throughput_ratio'], 2)} "
                     f"| {_f(q['p50_ratio'], 2)} | {_f(q['p99_ratio'], 2)} | {_f(q['server_cpu_per_op_ratio'], 2)} |")
    return "\n".join(lines)


def floor_table(runs: list[dict[str, Any]]) -> str:
    """raftkv's unary path against the gRPC floor (a server doing nothing) of the same RPC and concurrency:
    the server CPU per RPC of raftkv's leader (the node that takes every write; reads are spread) and the
    floor's one process, in µs."""
    floor = {(r["spec"]["mode"], r["spec"]["concurrency"]): r for r in runs if r["spec"]["system"] == "floor"}
    head = ("| raftkv run | conc | ops/s | p50 ms | leader CPU µs/op | all nodes CPU µs/op "
            "| floor ops/s | floor p50 ms | floor CPU µs/RPC | leader / floor |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in runs:
        s = r["spec"]
        f = floor.get((s["mode"], s["concurrency"]))
        if s["system"] != "raftkv" or s["client"] != "unary" or f is None or not r["ops"] or not f["ops"]:
            continue
        lead = next((n for n in r["nodes"] if n["leader"]), None)
        lead_us = lead["cpu_s"] / r["ops"] * 1e6 if lead else None
        all_us = r["server_cpu_s_total"] / r["ops"] * 1e6
        floor_us = f["server_cpu_s_total"] / f["ops"] * 1e6
        lines.append(f"| {s['label']} | {s['concurrency']} | {_f(r['throughput_ops_s'], 0)} "
                     f"| {_f(r['latency'].get('p50_ms'), 2)} | {_f(lead_us, 0)} | {_f(all_us, 0)} "
                     f"| {_f(f['throughput_ops_s'], 0)} | {_f(f['latency'].get('p50_ms'), 2)} | {_f(floor_us, 0)} "
                     f"| {_f(lead_us / floor_us if lead_us and floor_us else None, 2)} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def markdown(doc: dict[str, Any]) -> str:
    meta = doc["meta"]
    parts = [f"# raftkv benchmark {meta['started']}", "",
             f"Command: `{meta['command']}`", "",
             f"Machine: {meta['cpus']} CPUs, {meta['machine']}; loadavg at start `{meta['loadavg_start']}`, "
             f"at end `{meta.get('loadavg_end', '')}`; etcd {meta.get('etcd_version') or 'not run'}.", "",
             "CPU columns: CPU seconds per 1,000 operations of each server process (`*` = leader), from "
             "/proc/<pid>/stat over the measured window; client CPU is all client processes together.", ""]
    if doc.get("runs"):
        parts += ["## Runs", "", runs_table(doc["runs"]), "", "## raftkv / etcd (same run, same shape)", "",
                  ratio_table(doc.get("ratios", [])), ""]
        floor = floor_table(doc["runs"])
        if floor:
            parts += ["## Unary path: server CPU per RPC against the gRPC floor", "", floor, ""]
    for name, section in doc.get("sections", {}).items():
        parts += [f"## {name}", "", section, ""]
    return "\n".join(parts)


def plots(doc: dict[str, Any], out: Path) -> list[str]:
    """throughput vs concurrency per mode; latency CDF per mode at the highest concurrency."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    runs = doc.get("runs", [])
    made = []
    series: dict[str, list[tuple[int, float]]] = {}
    for r in runs:
        series.setdefault(r["spec"]["label"], []).append((r["spec"]["concurrency"], r["throughput_ops_s"]))
    swept = {k: sorted(v) for k, v in series.items() if len({c for c, _ in v}) > 1}
    if swept:
        fig, ax = plt.subplots(figsize=(8, 5))
        for label, pts in sorted(swept.items()):
            ax.plot([c for c, _ in pts], [t for _, t in pts], marker="o", label=label,
                    linestyle="--" if label.startswith("etcd") else "-")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent operations (clients)")
        ax.set_ylabel("operations / s")
        ax.set_title("Throughput vs concurrency")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "throughput.png", dpi=110)
        plt.close(fig)
        made.append("throughput.png")
    if runs:
        top = max(r["spec"]["concurrency"] for r in runs)
        at_top = [r for r in runs if r["spec"]["concurrency"] == top and r["latency"].get("count")]
        groups = {"writes": [r for r in at_top if not r["spec"]["mode"].startswith("read-")],
                  "reads": [r for r in at_top if r["spec"]["mode"].startswith("read-")]}
        for group, rs in groups.items():
            if not rs:
                continue
            fig, ax = plt.subplots(figsize=(8, 5))
            colors = plt.get_cmap("tab20").colors
            for k, r in enumerate(rs):
                cdf = r["latency"]["cdf"]
                ax.plot([x for x, _ in cdf], [q for _, q in cdf], label=r["spec"]["label"], color=colors[k % 20],
                        linestyle="--" if r["spec"]["system"] == "etcd" else "-", linewidth=1.6)
            ax.set_xscale("log")
            ax.set_xlabel("latency (ms)")
            ax.set_ylabel("fraction of operations")
            ax.set_title(f"Latency CDF per mode ({group}), {top} concurrent operations")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(out / f"latency_cdf_{group}.png", dpi=110)
            plt.close(fig)
            made.append(f"latency_cdf_{group}.png")
    for name, fig_spec in doc.get("figures", {}).items():
        fig, ax = plt.subplots(figsize=(8, 5))
        for label, pts in fig_spec["series"].items():
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=label)
        ax.set_xscale(fig_spec.get("xscale", "log"))
        ax.set_xlabel(fig_spec["xlabel"])
        ax.set_ylabel(fig_spec["ylabel"])
        ax.set_title(fig_spec["title"])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
        made.append(f"{name}.png")
    return made


def write(doc: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    doc["plots"] = plots(doc, out)
    (out / "results.json").write_text(json.dumps(doc, indent=2, default=str))
    (out / "results.md").write_text(markdown(doc))
