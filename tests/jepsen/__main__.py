"""Command line: one run, or the whole matrix (every nemesis × every workload).

    python -m tests.jepsen --workload register --nemesis isolate-leader --seed 7 --time-limit 20
    python -m tests.jepsen --matrix --time-limit 15 --out results/matrix

Each run writes history.jsonl, summary.json, summary.txt, latency.png and throughput.png into its own
folder under --out; the matrix adds matrix.json and matrix.txt. Exit status 1 if any run failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .nemesis import NEMESES, WITNESS_NEMESES
from .runner import RunConfig, run_one, write_matrix_summary
from .topology import Topology, TopologyError, check_environment
from .witness_topology import TOPOLOGIES
from .workloads import WORKLOADS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.jepsen", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="register")
    ap.add_argument("--nemesis", choices=NEMESES + WITNESS_NEMESES, default="mixed")
    ap.add_argument("--seed", type=int, default=1, help="seeds the fault schedule and the clients' choices")
    ap.add_argument("--time-limit", type=float, default=20.0, help="seconds of load and faults per run")
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--topology", choices=TOPOLOGIES,
                    help="a witness topology: 2+1 (2 data nodes + 1 witness) or 4+1; sets the number of nodes")
    ap.add_argument("--matrix", action="store_true", help="run every nemesis × every workload")
    ap.add_argument("--workloads", help="matrix: comma-separated subset of workloads")
    ap.add_argument("--nemeses", help="matrix: comma-separated subset of nemeses")
    ap.add_argument("--out", type=Path, help="results folder (default results/<timestamp>)")
    ap.add_argument("--prefix", default="rkvjm", help="name prefix of the namespaces and links the suite owns")
    ap.add_argument("--peer-transport", choices=["grpc", "tcp"], default="grpc",
                    help="nodes send each other Raft batches over gRPC streams or TCP peer ports (--peer-listen)")
    ap.add_argument("--net", type=int, default=1, help="the nodes' subnet is 10.213.NET.0/24 (one per prefix)")
    ap.add_argument("--recheck", type=Path, metavar="DIR",
                    help="run the checkers again over the histories saved under DIR (no cluster needed)")
    ap.add_argument("--cleanup", action="store_true", help="only remove leftovers of a crashed run, then exit")
    args = ap.parse_args(argv)

    if args.recheck:
        return recheck(args.recheck)
    try:
        check_environment()
    except TopologyError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    if args.cleanup:
        Topology(args.prefix, args.nodes).teardown()
        return 0
    out = args.out or Path("results") / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    if args.matrix:
        workloads = _subset(args.workloads, sorted(WORKLOADS), "workload")
        nemeses = _subset(args.nemeses, NEMESES, "nemesis", NEMESES + WITNESS_NEMESES)
        configs = [RunConfig(w, n, args.seed + i, args.time_limit, args.nodes, prefix=args.prefix,
                             net=args.net, topology=args.topology or "",
                             peer_transport=args.peer_transport)
                   for i, (n, w) in enumerate(_matrix_pairs(nemeses, workloads))]
    else:
        configs = [RunConfig(args.workload, args.nemesis, args.seed, args.time_limit, args.nodes, prefix=args.prefix,
                             net=args.net, topology=args.topology or "",
                             peer_transport=args.peer_transport)]
    results = []
    for i, cfg in enumerate(configs, 1):
        res = run_one(cfg, out)
        results.append(res)
        verdict = {True: "PASS", False: "FAIL", None: "UNKNOWN"}[res.valid]
        print(f"[{i}/{len(configs)}] {cfg.workload:<11} × {cfg.nemesis:<26} seed {cfg.seed:<4} {verdict:<7} "
              f"{res.operations:>6} ops {res.faults:>3} faults {res.seconds:5.0f}s  {res.error[:100]}", flush=True)
        if res.valid is False:
            print(f"    see {res.out / 'summary.txt'}", flush=True)
    print(write_matrix_summary(results, out))
    print(f"results in {out}")
    return 0 if all(r.valid is True for r in results) else 1


def recheck(root: Path) -> int:
    """Check saved histories again (e.g. after a checker changed); prints one line per run."""
    import json

    from .history import pair, read_jsonl

    bad = 0
    for summary in sorted(root.glob("*/summary.json")):
        meta = json.loads(summary.read_text())
        history = summary.parent / "history.jsonl"
        if meta.get("error") or not history.exists():
            print(f"{meta['run']:<48} skipped: {meta.get('error') or 'no history'}")
            continue
        ops = pair(read_jsonl(history))
        verdicts = WORKLOADS[meta["workload"]](meta["seed"]).check(ops)
        ok = all(v.valid is True for v in verdicts)
        bad += not ok
        print(f"{meta['run']:<48} {'PASS' if ok else 'FAIL'}  " + " ".join(f"{v.checker}={v.label}" for v in verdicts))
    return 1 if bad else 0


def _matrix_pairs(nemeses: list[str], workloads: list[str]) -> list[tuple[str, str]]:
    """Every nemesis × every workload; a workload that names its nemeses (`matrix_nemeses`) is paired
    only with those, after all the others, so adding one leaves the other runs' seeds as they were."""
    every = [w for w in workloads if WORKLOADS[w].matrix_nemeses is None]
    chosen = [w for w in workloads if WORKLOADS[w].matrix_nemeses is not None]
    return ([(n, w) for n in nemeses for w in every]
            + [(n, w) for w in chosen for n in nemeses if n in (WORKLOADS[w].matrix_nemeses or ())])


def _subset(raw: str | None, default: list[str], what: str, allowed: list[str] | None = None) -> list[str]:
    """The items named in `raw` (each one of `allowed`, default: `default`), or `default` when none is."""
    if not raw:
        return list(default)
    allowed = allowed if allowed is not None else default
    items = [x.strip() for x in raw.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad:
        raise SystemExit(f"Error: unknown {what} {', '.join(bad)}; choose from {', '.join(allowed)}")
    return items


if __name__ == "__main__":
    sys.exit(main())
