"""A run with py-spy sampling one server process, to find what bounds it rather than guess.

py-spy records the process's stacks into a collapsed-stack file (profile-<target>.txt, usable with any
flame graph tool). With `--gil` (the default) only the thread holding the GIL is sampled, so the shares
are shares of the Python CPU time that serialises everything in the process; without it, threads waiting
in fsync count too. The summary lists functions by samples on top of the stack (self) and anywhere on it
(inclusive), as a percentage of all samples."""

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


BOILERPLATE = ("click/", "runpy", "asyncio/runners.py", "threading.py", "server_main.py", "lifecycle.py",
               "run_forever", "run_until_complete", "_run_once", "futures/thread.py", "spawn.py", "process.py",
               "Handle._run", "_worker (", "asyncio/tasks.py")


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
            # Frames that only carry the process (entry point, event loop, thread bootstrap) say nothing.
            "inclusive": [[f, round(c / total * 100, 1)] for f, c in incl.most_common()
                          if not any(b in f for b in BOILERPLATE)][:top]}


def _short(frame: str) -> str:
    # py-spy frames look like "function (path/to/file.py:123)"; keep the function and the file's tail.
    fn, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    parts = where.split("/")
    tail = "/".join(parts[-2:]) if len(parts) > 1 else where
    return f"{fn} ({tail})"


def profile_table(summary: dict[str, Any], key: str) -> str:
    lines = ["| % of samples | function |", "|---|---|"]
    lines += [f"| {p} | `{f}` |" for f, p in summary.get(key, [])]
    return "\n".join(lines)


def run_profile(doc: dict[str, Any], out: Path, a: argparse.Namespace, base: RunSpec) -> None:
    """py-spy on the leader, a follower, or the first client process, for the length of one run."""
    system = a.system
    root = out / "data" / system
    extra = ["--lease-reads"] if system == "raftkv" else None
    with running_cluster(system, root, base.nodes, extra) as cluster:
        leader = cluster.leader_id()
        spec = replace(base, system=system, endpoints=cluster.endpoints(),
                       leader=cluster.nodes[leader].client_address)
        preload(replace(spec, mode="write-majority"), base.keys)
        target = {"leader": leader, "follower": next(i for i in cluster.nodes if i != leader)}.get(a.target)
        if system == "etcd" and a.target != "client":
            raise SystemExit("py-spy profiles Python processes: with --system etcd only --target client works")
        raw_path = out / f"profile-{system}-{a.target}.txt"
        spy: list[subprocess.Popen[bytes]] = []

        def attach(pid: int) -> None:
            args = [py_spy(), "record", "-p", str(pid), "-d", str(int(base.duration_s)), "-r", "200", "-f", "raw",
                    "-o", str(raw_path), "--nonblocking"] + (["--gil"] if a.gil else [])
            spy.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))

        if target is not None:
            pid = cluster.nodes[target].pid
            attach(pid)
            raw = run_load(spec, cluster.pids())
        else:
            pids: list[int] = []
            raw = run_load(spec, cluster.pids(), on_start=lambda ps: (pids.extend(ps), attach(ps[0])))
            pid = pids[0] if pids else 0
        err = b""
        for p in spy:
            try:
                _, err = p.communicate(timeout=base.duration_s + 60)
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
        r = summarize(spec, raw, leader)
        doc["runs"].append(r)
        summary = summarize_collapsed(raw_path) if raw_path.exists() else {"samples": 0, "error": err.decode()[-500:]}
        who = f"{system} {a.target}" + (f" (node {target})" if target else "")
        doc["profile"] = {"system": system, "target": a.target, "node": target, "pid": pid, "raw": raw_path.name,
                          "gil_only": a.gil, **summary}
        doc.setdefault("sections", {})[f"Profile of the {who}, self time"] = profile_table(summary, "self")
        doc["sections"][f"Profile of the {who}, inclusive time"] = profile_table(summary, "inclusive")
    finish(doc, out)
