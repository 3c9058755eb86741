"""python -m raftkv.sim --nodes 5 --seeds 1000 --faults all   (or --seed N --trace to replay one run)

With --host: the real host and layers over simulated time, network and disks, client histories
checked after each run (host_run.py); each seed draws its own cluster, settings, faults and clients:
python -m raftkv.sim --host --seeds 1000   (or --host --seed N [--trace] to replay one run)"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .cluster import ALL_FAULTS, SimOptions, SimResult
from .runner import run_seeds

if TYPE_CHECKING:
    from .host_run import HostSimResult


def parse_faults(text: str) -> tuple[str, ...]:
    if text == "all":
        return ALL_FAULTS
    if text == "none":
        return ()
    faults = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in faults if f not in ALL_FAULTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown fault(s) {unknown}; choose from {', '.join(ALL_FAULTS)}")
    return faults


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m raftkv.sim", description=__doc__)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--seeds", type=int, default=100, help="run seeds first..first+N-1")
    p.add_argument("--first-seed", type=int, default=1)
    p.add_argument("--seed", type=int, help="run just this seed")
    p.add_argument("--faults", type=parse_faults, default=ALL_FAULTS, help=f"all, none, or a list of {ALL_FAULTS}")
    p.add_argument("--duration", type=int, default=4000, help="time units before the final heal")
    p.add_argument("--trace", action="store_true", help="print every event (use with --seed)")
    p.add_argument("--host", action="store_true", help="run the real host and layers, with client histories")
    p.add_argument("--host-duration", type=float, default=2.0, help="simulated seconds before the final heal (--host)")
    a = p.parse_args(argv)
    if a.host:
        return _main_host(a)
    if a.nodes < 1:
        p.error("--nodes must be >= 1")
    base = SimOptions(nodes=a.nodes, faults=a.faults, duration=a.duration, trace=a.trace)
    seeds = [a.seed] if a.seed is not None else range(a.first_seed, a.first_seed + a.seeds)

    def report(r: SimResult) -> None:
        if r.violation is not None:
            print(f"\nseed {r.seed}: VIOLATION of {r.violation.invariant}: {r.violation.detail}", file=sys.stderr)
            if not a.trace:
                print("last events:", file=sys.stderr)
                for line in r.trace[-60:]:
                    print("  " + line, file=sys.stderr)
            print(f"replay: {r.replay_command(a.faults)}", file=sys.stderr)

    summary = run_seeds(seeds, base, on_result=report)
    print(summary.line(a.nodes))
    return 1 if summary.failures else 0


def _main_host(a: argparse.Namespace) -> int:
    from .host_run import HostSimOptions, run_host_seeds

    seeds = [a.seed] if a.seed is not None else range(a.first_seed, a.first_seed + a.seeds)
    base = HostSimOptions(duration_s=a.host_duration, trace=a.trace)

    def report(r: HostSimResult) -> None:
        if r.violation is None:
            return
        print(f"\nseed {r.seed}: VIOLATION of {r.violation.invariant}: {r.violation.detail}", file=sys.stderr)
        print(f"swarm: {r.swarm.line()}", file=sys.stderr)
        if r.shrunk:
            print("history of the keys involved (>> the offending operations):", file=sys.stderr)
            for line in r.shrunk:
                print("  " + line, file=sys.stderr)
        if not a.trace:
            print("last events:", file=sys.stderr)
            for line in r.trace[-40:]:
                print("  " + line, file=sys.stderr)
        print(f"replay: {r.replay_command()}", file=sys.stderr)

    summary = run_host_seeds(seeds, base, on_result=report)
    print(summary.line())
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
