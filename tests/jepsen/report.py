"""Per-run output: summary (JSON and a short text table) and PNG plots of latency and throughput over
time, with the fault windows shaded. matplotlib runs with the Agg backend (no display needed)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .history import History

if TYPE_CHECKING:
    from .nemesis import Window
    from .runner import RunResult

STATUS_COLORS = {"ok": "tab:green", "fail": "tab:red", "info": "tab:orange"}


def run_table(res: RunResult) -> str:
    s = res.summary()
    lines = [f"run        {s['run']}",
             f"workload   {s['workload']}    nemesis {s['nemesis']}    seed {s['seed']}",
             f"operations {s['operations']}    faults {s['faults']} {s['fault_kinds'] or ''}",
             f"verdict    {_label(res.valid)}" + (f"    error: {res.error}" if res.error else ""),
             "",
             f"{'checker':<26}{'verdict':<9}{'ops':>7}  anomalies / stats"]
    for v in res.verdicts:
        kinds: dict[str, int] = defaultdict(int)
        for a in v.anomalies:
            kinds[a.get("type", "?")] += 1
        detail = ", ".join(f"{k}×{n}" for k, n in kinds.items()) or "none"
        lines.append(f"{v.checker:<26}{v.label:<9}{v.ops_checked:>7}  {detail}; {json.dumps(v.stats, default=repr)}")
    for v in res.verdicts:
        for a in v.anomalies[:3]:
            lines.append(f"  {v.checker}: {json.dumps(a, default=repr)[:2000]}")
    return "\n".join(lines) + "\n"


def _label(valid: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "UNKNOWN"}[valid]


def matrix_table(results: list[RunResult]) -> str:
    head = f"{'workload':<12}{'nemesis':<27}{'seed':>5}{'ops':>7}{'faults':>7}  {'verdict':<8} checkers"
    lines = [head, "-" * len(head)]
    for r in results:
        checks = " ".join(f"{v.checker}={v.label}" + _extra(v) for v in r.verdicts) or r.error[:80]
        lines.append(f"{r.config.workload:<12}{r.config.nemesis:<27}{r.config.seed:>5}{r.operations:>7}{r.faults:>7}"
                     f"  {_label(r.valid):<8} {checks}")
    total_ops = sum(r.operations for r in results)
    total_faults = sum(r.faults for r in results)
    passed = sum(1 for r in results if r.valid is True)
    lines.append("-" * len(head))
    lines.append(f"{len(results)} runs, {passed} passed, {total_ops} operations, {total_faults} faults")
    return "\n".join(lines) + "\n"


def _extra(v: Any) -> str:
    if v.checker == "lost-writes-leader-ack":
        return f"(lost {v.stats.get('lost', 0)}/{v.stats.get('acknowledged', 0)})"
    return ""


def write_report(res: RunResult, history: History, windows: list[Window], out: Path) -> None:
    (out / "summary.json").write_text(json.dumps(res.summary(), indent=2, default=repr))
    (out / "summary.txt").write_text(run_table(res))
    try:
        plot(history, windows, out, res.config.name)
    except Exception as e:  # noqa: BLE001 - plots are a convenience; the verdict does not depend on them
        (out / "plot-error.txt").write_text(f"{type(e).__name__}: {e}\n")


def plot(history: History, windows: list[Window], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = [o for o in history.ops() if o.process != "final"]
    if not ops:
        return
    horizon = max(o.start for o in ops) + 1

    def shade(ax: Any) -> None:
        seen: set[str] = set()
        for w in windows:
            ax.axvspan(w.start, w.end, color="tab:gray", alpha=0.18, lw=0,
                       label=None if "fault" in seen else "fault")
            seen.add("fault")
            ax.text(w.start, 1.0, w.kind, transform=ax.get_xaxis_transform(), fontsize=6, va="top", rotation=90,
                    color="dimgray")

    fig, ax = plt.subplots(figsize=(11, 4.5))
    shade(ax)
    for status, color in STATUS_COLORS.items():
        xs = [o.start for o in ops if o.status == status]
        ys = [((o.end if o.status != "info" else o.start + 1.0) - o.start) * 1000 for o in ops if o.status == status]
        if xs:
            ax.scatter(xs, ys, s=4, c=color, label=f"{status} ({len(xs)})", alpha=0.6, linewidths=0)
    ax.set_yscale("log")
    ax.set_xlim(0, horizon)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("latency (ms, log)")
    ax.set_title(f"{title}: latency per operation (info plotted at the client deadline)")
    ax.legend(loc="upper right", fontsize=8, markerscale=3)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(11, 4.5))
    shade(ax)
    bucket = 0.5
    n = int(horizon / bucket) + 1
    for status, color in STATUS_COLORS.items():
        counts = [0] * n
        for o in ops:
            if o.status == status:
                t = o.end if status != "info" else o.start
                counts[min(n - 1, int(t / bucket))] += 1
        ax.plot([i * bucket for i in range(n)], [c / bucket for c in counts], color=color, label=status, lw=1.2)
    ax.set_xlim(0, horizon)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("operations / s")
    ax.set_title(f"{title}: throughput by outcome ({bucket}s buckets)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)
