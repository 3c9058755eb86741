"""python -m raftkv.sim --seeds 1000          run seeds 1..1000, each drawing its own swarm
python -m raftkv.sim --seed N [--trace]     replay one seed exactly (a failing one is shrunk)
python -m raftkv.sim --figure8 --seeds 200  the paper's Figure 8 schedules (3 nodes, one entry per message,
                                            new leaders crashing moments after winning)

Every run is the real host and layers over simulated time, network and disks, with Raft's invariants
checked as it goes and the clients' history after it (host_run.py). `--host` is accepted and ignored
(there is one simulator)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .host_run import HostSimResult, run_host_seeds
from .shrink import shrink
from .swarm import FIGURE8, HOST_FAULTS, HostSimOptions


def parse_faults(text: str) -> tuple[str, ...]:
    if text == "all":
        return HOST_FAULTS
    if text == "none":
        return ()
    faults = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in faults if f not in HOST_FAULTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown fault(s) {unknown}; choose from {', '.join(HOST_FAULTS)}")
    return faults


def parse_numbers(text: str) -> frozenset[int]:
    if text == "none":
        return frozenset()
    try:
        return frozenset(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m raftkv.sim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=100, help="run seeds first..first+N-1")
    p.add_argument("--first-seed", type=int, default=1)
    p.add_argument("--seed", type=int, help="run just this seed")
    p.add_argument("--nodes", type=int, help="founding voters (default: drawn per seed, 1-7)")
    p.add_argument("--witnesses", type=int, default=0,
                   help="how many founding voters (the highest ids) are witnesses; with --nodes")
    p.add_argument("--faults", type=parse_faults, help=f"all, none, or a list of {', '.join(HOST_FAULTS)} "
                   "(default: a mix drawn per seed)")
    p.add_argument("--figure8", action="store_true", help="the Figure 8 profile (3 nodes, its faults)")
    p.add_argument("--duration", type=float, default=HostSimOptions().duration_s,
                   help="simulated seconds of faults before the final heal")
    p.add_argument("--events", type=parse_numbers, help="run only these events of the seed's schedule (shrinking)")
    p.add_argument("--clients-kept", type=parse_numbers, help="run only these clients (shrinking)")
    p.add_argument("--no-shrink", action="store_true", help="report a failing seed without shrinking it")
    p.add_argument("--trace", action="store_true", help="print every event (use with --seed)")
    p.add_argument("--host", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.nodes is not None and not 1 <= a.nodes <= 9:
        p.error("--nodes must be in 1..9")
    base = FIGURE8 if a.figure8 else HostSimOptions()
    base = dataclasses.replace(base, duration_s=a.duration, trace=a.trace, keep_events=a.events,
                               keep_clients=a.clients_kept)
    if a.witnesses and (a.nodes is None or not 0 < a.witnesses < a.nodes):
        p.error("--witnesses needs --nodes, and fewer witnesses than nodes")
    if a.nodes is not None:
        base = dataclasses.replace(base, nodes=a.nodes, witnesses=a.witnesses)
    if a.faults is not None:
        base = dataclasses.replace(base, faults=a.faults)
    seeds = [a.seed] if a.seed is not None else range(a.first_seed, a.first_seed + a.seeds)

    def report(r: HostSimResult) -> None:
        if r.violation is None:
            return
        print(f"\nseed {r.seed}: VIOLATION of {r.violation.invariant}: {r.violation.detail}", file=sys.stderr)
        print(f"swarm: {r.swarm.line()}", file=sys.stderr)
        print(f"replay: {r.replay_command()}", file=sys.stderr)
        if a.no_shrink:
            for line in r.shrunk or r.trace[-40:]:
                print("  " + line, file=sys.stderr)
            return
        for line in shrink(r).report():
            print(line, file=sys.stderr)

    summary = run_host_seeds(seeds, base, on_result=report)
    print(summary.line())
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
