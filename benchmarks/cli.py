"""`python -m benchmarks ...`: the benchmark harness's command line.

    run       the matrix of modes against raftkv and etcd (the default: a complete but short run)
    scale     throughput and p99 as key count, value size or cluster size grows; memory per key
    catchup   time for a restarted node to catch up after a large log / snapshot
    failover  kill -9 the leader under writes: election, write outage, catch-up, lost writes
    profile   a run with py-spy attached to the leader, a follower or a client, to see what bounds it
    hops      where a lone (c=1) write's and read's time goes, hop by hop, from the nodes' own timestamps
    watch     watch fan-out to 1..1000 watchers of one prefix: events/s, delay from ack to delivery
    leases    keep-alives/s a cluster sustains; memory and CPU of 10,000 live leases on the leader
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from .clusters import DEFAULT_PEER_TRANSPORT, PEER_TRANSPORT_ENV, PEER_TRANSPORTS, RAFTKV_FLAGS_ENV
from .spec import RunSpec, all_modes

DEFAULT_MODES = ["write-majority", "write-leader", "write-semi_sync", "write-sync", "read-linearizable",
                 "read-lease", "read-serializable", "read-bounded_staleness", "read-session", "mixed"]
DEFAULT_SWEEP = ["write-majority", "read-linearizable"]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _strs(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=3, help="cluster size (default 3)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds of load per run (default 8; `run`: 6)")
    p.add_argument("--max-ops", type=int, default=2_000_000, help="operations per run at most")
    p.add_argument("--keys", type=int, default=10_000, help="key space, preloaded before the runs (default 10000)")
    p.add_argument("--key-size", type=int, default=16)
    p.add_argument("--value-size", type=int, default=256)
    p.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
    p.add_argument("--client", choices=["unary", "batch", "etcd"], default="batch",
                   help="raftkv client path: one RPC per operation, the client's coalescing KV.Batch path, or "
                        "etcd's v3 API with the same driver etcd gets")
    p.add_argument("--read-target", choices=["all", "leader"], default="all")
    p.add_argument("--out", default="results", help="results go to OUT/bench-<timestamp>/")
    p.add_argument("--peer-transport", choices=list(PEER_TRANSPORTS), default=None,
                   help="how raftkv nodes send Raft batches to each other: tcp (a --peer-listen port each) or "
                        f"grpc streams (default {DEFAULT_PEER_TRANSPORT})")
    p.add_argument("--raftkv-flag", action="append", default=[],
                   help="one more `raftkv serve` flag for every raftkv node, repeatable "
                        "(e.g. --raftkv-flag=--overload-max-queue-delay-ms=0)")


def _base(a: argparse.Namespace, mode: str = "write-majority", concurrency: int = 64) -> RunSpec:
    return RunSpec(system="raftkv", mode=mode, concurrency=concurrency, nodes=a.nodes, keys=a.keys,
                   key_size=a.key_size, value_size=a.value_size, duration_s=a.duration, max_ops=a.max_ops,
                   procs=a.procs, client=a.client, read_target=a.read_target)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")

    run = sub.add_parser("run", help="the mode matrix against raftkv and etcd")
    _common(run)
    run.add_argument("--systems", default="raftkv,etcd,floor",
                     help="any of raftkv, etcd, floor (the gRPC floor: a KV server doing nothing, beside raftkv's "
                          "unary path); default all three")
    run.add_argument("--modes", default=",".join(DEFAULT_MODES), help=f"from: {', '.join(all_modes())}")
    run.add_argument("--sweep-modes", default=",".join(DEFAULT_SWEEP),
                     help="modes run at every --concurrency (others at those of --all-modes-at)")
    run.add_argument("--all-modes-at", default="1,16,64",
                     help="concurrencies at which every mode runs (default 1,16,64; the highest --concurrency "
                          "if none of them is in it)")
    run.add_argument("--unary-modes", default=",".join(DEFAULT_SWEEP),
                     help="modes also run through raftkv's unary path at every concurrency ('' for none)")
    run.add_argument("--concurrency", default="1,16,64,256", help="comma list (default 1,16,64,256)")
    run.add_argument("--preload-timeout", type=float, default=600.0)
    run.set_defaults(duration=6.0)

    sc = sub.add_parser("scale", help="key count, value size, cluster size; memory per key")
    _common(sc)
    sc.add_argument("--what", default="keys,values,nodes", help="any of keys, values, nodes")
    sc.add_argument("--systems", default="raftkv,etcd")
    sc.add_argument("--key-counts", default="10000,100000,1000000")
    sc.add_argument("--value-sizes", default="64,1024,16384,65536")
    sc.add_argument("--cluster-sizes", default="3,5")
    sc.add_argument("--concurrency", type=int, default=64)
    sc.add_argument("--preload-timeout", type=float, default=900.0)

    cu = sub.add_parser("catchup", help="restart a follower after a large log / snapshot; time to catch up")
    _common(cu)
    cu.add_argument("--entries", type=int, default=50_000, help="writes while the follower is down")
    cu.add_argument("--systems", default="raftkv,etcd")
    cu.add_argument("--preload-timeout", type=float, default=900.0)

    from .failover import add_parser as add_failover

    add_failover(sub, _common)
    from .hops import add_parser as add_hops

    add_hops(sub, _common)
    from .overload import add_parser as add_overload

    add_overload(sub, _common)
    from .leases import add_parser as add_leases
    from .watch import add_parser as add_watch

    add_watch(sub, _common)
    add_leases(sub, _common)

    pr = sub.add_parser("profile", help="one run with a profiler attached to the leader")
    _common(pr)
    pr.add_argument("--mode", default="write-majority")
    pr.add_argument("--concurrency", type=int, default=64)
    pr.add_argument("--system", choices=["raftkv", "etcd"], default="raftkv")
    pr.add_argument("--target", choices=["leader", "follower", "client"], default="leader")
    pr.add_argument("--gil", action=argparse.BooleanOptionalAction, default=True,
                    help="sample only the thread holding the GIL (Python CPU), or every non-idle thread")

    # SIGTERM or SIGINT end the harness through its `finally` blocks, so every cluster it started is
    # stopped (each server by its PID) rather than left running.
    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    a = ap.parse_args(argv or ["run"])
    if a.cmd is None:
        a = ap.parse_args(["run", *argv])
    if a.peer_transport:
        os.environ[PEER_TRANSPORT_ENV] = a.peer_transport  # read by RaftkvCluster, in this process and below
    if a.raftkv_flag:
        os.environ[RAFTKV_FLAGS_ENV] = json.dumps(a.raftkv_flag)  # the same, for `--raftkv-flag`
    from .runner import new_doc, results_dir

    out = results_dir(a.out)
    doc = new_doc(argv)
    from .clusters import peer_transport, raftkv_flags

    doc["meta"]["peer_transport"] = peer_transport()
    doc["meta"]["raftkv_flags"] = raftkv_flags()
    print(f"results: {out}", file=sys.stderr, flush=True)
    if a.cmd == "run":
        from .runner import run_matrix

        modes = _strs(a.modes)
        for m in modes:
            if m not in all_modes():
                ap.error(f"unknown mode {m!r}; choose from {', '.join(all_modes())}")
        run_matrix(doc, out, _strs(a.systems), _base(a), modes, _strs(a.sweep_modes), _ints(a.concurrency),
                   a.preload_timeout, _strs(a.unary_modes), _ints(a.all_modes_at))
    elif a.cmd == "scale":
        from .scale import run_scale

        run_scale(doc, out, a, _base(a, concurrency=a.concurrency))
    elif a.cmd == "catchup":
        from .scale import run_catchup

        run_catchup(doc, out, a, _base(a))
    elif a.cmd == "failover":
        from .failover import run_failover

        run_failover(doc, out, a)
    elif a.cmd == "hops":
        from .hops import compare, run_hops

        if a.compare:
            from pathlib import Path

            before, after = (json.loads(Path(p).read_text()).get("hops", {}) for p in a.compare)
            print(compare(before, after))
            return 0
        run_hops(doc, out, a, _base(a, concurrency=1))
    elif a.cmd == "overload":
        from .overload import run_overload

        run_overload(doc, out, a)
    elif a.cmd == "watch":
        from .watch import run_watch

        run_watch(doc, out, a)
    elif a.cmd == "leases":
        from .leases import run_leases

        run_leases(doc, out, a)
    elif a.cmd == "profile":
        from .profile import run_profile

        run_profile(doc, out, a, _base(a, mode=a.mode, concurrency=a.concurrency))
    print(f"results: {out}/results.md", file=sys.stderr)
    print((out / "results.md").read_text())
    return 0
