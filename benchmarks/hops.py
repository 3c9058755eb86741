"""Where a lone request's time goes, hop by hop: `python -m benchmarks hops`.

A raftkv cluster is started with RAFTKV_TRACE_HOPS=1 (raftkv/hop_trace.py): each node records a
timestamp at each hop (RPC in and out, host loop wake-ups, Readys, log syncs on the I/O thread, peer
batches written and received, messages handed to the transport, entries applied, read states). This
process then sends one operation at a time (c=1) and stamps each send and answer on the same clock
(CLOCK_MONOTONIC is one clock for every process on the machine). Per operation, the hops of its
critical path (`CHAINS`) are found in the merged events, each the first of its kind after the hop
before it; nodes are named by their part: `L` the leader, `S` the node that served a read, `Q` the
follower whose answer the leader counted first (on 3 nodes one follower's answer completes the quorum;
the other's events are off the path). The table gives, per hop, the median and p90 of the time since the
hop before it, over the operations whose whole path was found (their count is printed), beside the
end-to-end figures of all operations.

An optional etcd cluster gives the same client's end-to-end figure against etcd, for scale.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import statistics
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

from .runner import finish, running_cluster
from .spec import RunSpec

CASES = {
    "write": ("write-majority", "leader"),
    "read-leader": ("read-linearizable", "leader"),
    "read-follower": ("read-linearizable", "follower"),
}


def _drain(urls: dict[int, str]) -> dict[int, list[tuple[int, str]]]:
    out = {}
    for i, url in urls.items():
        with urllib.request.urlopen(url, timeout=5) as r:
            out[i] = [tuple(e) for e in json.loads(r.read())]
    return out


async def _sequential(driver: Any, kind: str, n: int, keys: int) -> list[tuple[int, int]]:
    """n operations one after another; (send, answer) in monotonic ns."""
    spans = []
    clock = time.monotonic_ns
    op = driver.put if kind == "write" else driver.get
    for k in range(n):
        t0 = clock()
        await op(k % keys, 0)
        spans.append((t0, clock()))
    return spans


# The critical path of each case: (role, hop, optional). Roles: C this client, L the leader, S the node
# that serves a read, Q the follower whose answer the leader counted first (it may be S). `.R` in a hop
# names the peer it went to or came from. An optional hop is matched only if it comes before the next
# hop that must be there (a loop already awake, say, has no wake-up to record).
OPT = True
CHAINS: dict[str, list[tuple[str, str, bool]]] = {
    "write": [("L", "rpc.in", False), ("L", "loop.wake", OPT), ("L", "ready", False), ("L", "send.app", False),
              ("L", "peer.write.Q", False), ("Q", "peer.recv.L", False), ("Q", "loop.wake", OPT),
              ("Q", "ready", False), ("Q", "sync.start", False), ("Q", "sync.end", False),
              ("Q", "sync.back", False), ("Q", "send.app_resp", False), ("Q", "peer.write.L", False),
              ("L", "peer.recv.Q", False), ("L", "loop.wake", OPT), ("L", "ready", False),
              ("L", "applied", False), ("L", "api.resumed", OPT), ("L", "rpc.out", False)],
    "read-leader": [("L", "rpc.in", False), ("L", "loop.wake", OPT), ("L", "ready", False),
                    ("L", "send.heartbeat", False), ("L", "peer.write.Q", False), ("Q", "peer.recv.L", False),
                    ("Q", "loop.wake", OPT), ("Q", "ready", False), ("Q", "send.heartbeat_resp", False),
                    ("Q", "peer.write.L", False), ("L", "peer.recv.Q", False), ("L", "loop.wake", OPT),
                    ("L", "ready", False), ("L", "read.state", False), ("L", "api.resumed", OPT),
                    ("L", "rpc.out", False)],
    "read-follower": [("S", "rpc.in", False), ("S", "loop.wake", OPT), ("S", "ready", False),
                      ("S", "send.read_index", False), ("S", "peer.write.L", False), ("L", "peer.recv.S", False),
                      ("L", "loop.wake", OPT), ("L", "ready", False), ("L", "send.heartbeat", False),
                      ("L", "peer.write.Q", False), ("Q", "peer.recv.L", False), ("Q", "loop.wake", OPT),
                      ("Q", "ready", False), ("Q", "send.heartbeat_resp", False), ("Q", "peer.write.L", False),
                      ("L", "peer.recv.Q", False), ("L", "loop.wake", OPT), ("L", "ready", False),
                      ("L", "send.read_index_resp", False), ("L", "peer.write.S", False),
                      ("S", "peer.recv.L", False), ("S", "loop.wake", OPT), ("S", "ready", False),
                      ("S", "read.state", False), ("S", "api.resumed", OPT), ("S", "rpc.out", False)],
}
ANSWERS = {"write": "send.app_resp", "read-leader": "send.heartbeat_resp", "read-follower": "send.heartbeat_resp"}


def _first(evs: list[tuple[int, str]], name: str, after: int, before: int) -> int | None:
    lo = bisect.bisect_left(evs, (after, ""))
    for t, n in evs[lo:]:
        if t > before:
            return None
        if n == name:
            return t
    return None


def _match(case: str, events: dict[int, list[tuple[int, str]]], t0: int, t1: int, leader: int, server: int
           ) -> list[tuple[str, int]] | None:
    """This operation's critical path: (step label, time) per hop found, or None if a hop is missing."""
    answer = ANSWERS[case]
    firsts = [(t, nid) for nid, evs in events.items() if nid != leader
              for t in [_first(evs, answer, t0, t1)] if t is not None]
    if not firsts:
        return None
    roles = {"L": leader, "S": server, "Q": min(firsts)[1]}
    chain = CHAINS[case]
    out: list[tuple[str, int]] = [("-1 C send", t0)]
    prev = t0

    def find(k: int) -> int | None:
        role, hop, _ = chain[k]
        base, _, peer = hop.rpartition(".")
        name = f"{base}.{roles[peer]}" if peer in roles else hop
        return _first(events.get(roles[role], []), name, prev, t1)

    for k, (role, hop, optional) in enumerate(chain):
        t = find(k)
        if optional:
            nxt = next((j for j in range(k + 1, len(chain)) if not chain[j][2]), None)
            tn = find(nxt) if nxt is not None else t1
            if t is None or (tn is not None and t > tn):
                continue
        if t is None:
            return None
        out.append((f"{k:02d} {role} {hop}", t))
        prev = t
    out.append((f"{len(chain):02d} C answer", t1))
    return out


def breakdown(case: str, events: dict[int, list[tuple[int, str]]], spans: list[tuple[int, int]], leader: int,
              server: int) -> dict[str, Any]:
    """Each hop of the case's critical path: in how many operations it was seen, the median and p90 (µs) of
    the time from the hop before it; the operations' end-to-end figures; the leader's own log sync."""
    for evs in events.values():
        evs.sort()
    gaps: dict[str, list[float]] = {}
    order: list[str] = []
    matched = 0
    own_sync: list[float] = []
    own_overlap: dict[str, list[float]] = {}
    for t0, t1 in spans:
        path = _match(case, events, t0, t1, leader, server)
        if path is None:
            continue
        matched += 1
        for (_, ta), (label, tb) in zip(path, path[1:], strict=False):
            if label not in gaps:
                gaps[label] = []
                order.append(label)
            gaps[label].append((tb - ta) / 1000)
        if case == "write":
            evs = events.get(leader, [])
            a = _first(evs, "sync.start", t0, t1)
            b = _first(evs, "sync.end", a or t0, t1) if a else None
            if a and b:
                own_sync.append((b - a) / 1000)
                back = _first(evs, "sync.back", b, t1)
                sent = next((t for lbl, t in path if lbl.endswith("L send.app")), None)
                acked = next((t for lbl, t in path if lbl.endswith("L peer.recv.Q")), None)
                if back and sent and acked:
                    own_overlap.setdefault("sync.start after send.app", []).append((a - sent) / 1000)
                    own_overlap.setdefault("sync.back after the quorum answer arrived", []).append(
                        (back - acked) / 1000)
    hops = []
    for label in sorted(order):
        d = sorted(gaps[label])
        hops.append({"hop": label.split(" ", 1)[1], "step": label, "ops": len(d), "p50_us": round(statistics.median(d), 1),
                     "p90_us": round(d[int(0.9 * (len(d) - 1))], 1)})
    total = sorted((t1 - t0) / 1000 for t0, t1 in spans)
    out = {"ops": len(spans), "matched": matched, "hops": hops,
           "p50_us": round(statistics.median(total), 1), "p90_us": round(total[int(0.9 * (len(total) - 1))], 1),
           "p99_us": round(total[int(0.99 * (len(total) - 1))], 1)}
    if own_sync:
        out["leader_sync_p50_us"] = round(statistics.median(own_sync), 1)
    for name, d in own_overlap.items():
        d.sort()
        out.setdefault("leader_sync_vs_path", {})[name] = {
            "p10_us": round(d[int(0.1 * (len(d) - 1))], 1), "p50_us": round(statistics.median(d), 1),
            "p90_us": round(d[int(0.9 * (len(d) - 1))], 1),
            "share_positive": round(sum(1 for x in d if x > 0) / len(d), 2)}
    return out


def hops_table(b: dict[str, Any]) -> str:
    lines = ["| until (time since the hop above) | ops | p50 µs | p90 µs |", "|---|---|---|---|"]
    lines += [f"| {h['hop']} | {h['ops']} | {h['p50_us']:.0f} | {h['p90_us']:.0f} |" for h in b["hops"]]
    lines.append(f"| sum of the p50s | | {sum(h['p50_us'] for h in b['hops']):.0f} | |")
    lines.append(f"| **end to end** (all {b['ops']} ops; p99 {b['p99_us']:.0f}) | {b['ops']} | **{b['p50_us']:.0f}** "
                 f"| **{b['p90_us']:.0f}** |")
    if "leader_sync_p50_us" in b:
        lines.append(f"| (beside the path: the leader's own log sync) | | {b['leader_sync_p50_us']:.0f} | |")
    for name, d in b.get("leader_sync_vs_path", {}).items():
        lines.append(f"| (beside the path: leader's {name}; > 0 in {d['share_positive']:.0%} of ops) | | "
                     f"{d['p50_us']:.0f} | {d['p90_us']:.0f} |")
    return "\n".join(lines)


def _run_client(spec: RunSpec, kind: str, n: int, warmup: int) -> list[tuple[int, int]]:
    from .drivers import make_driver

    async def go() -> list[tuple[int, int]]:
        driver = make_driver(spec)
        await driver.connect()
        try:
            await _sequential(driver, kind, warmup, spec.keys)
            return await _sequential(driver, kind, n, spec.keys)
        finally:
            await driver.close()

    return asyncio.run(go())


def run_hops(doc: dict[str, Any], out: Path, a: Any, base: RunSpec) -> None:
    """Each case of `a.cases` on one traced raftkv cluster (and etcd's end-to-end figure if asked)."""
    from .load import preload

    os.environ["RAFTKV_TRACE_HOPS"] = "1"  # inherited by the raftkv nodes started below
    cases = [c for c in a.cases.split(",") if c]
    results: dict[str, Any] = {}
    try:
        with running_cluster("raftkv", out / "data" / "raftkv", base.nodes, ["--lease-reads"]) as cluster:
            leader = cluster.leader_id()
            follower = next(i for i in sorted(cluster.nodes) if i != leader)
            spec0 = replace(base, system="raftkv", endpoints=cluster.endpoints(),
                            leader=cluster.nodes[leader].client_address, concurrency=1, procs=1)
            preload(replace(spec0, mode="write-majority"), base.keys, quiet=True)
            urls = {i: n.metrics_url.replace("/metrics", "/debug/hops") for i, n in cluster.nodes.items()}
            for case in cases:
                mode, target = CASES[case]
                server = leader if target == "leader" else follower
                spec = replace(spec0, mode=mode, read_target="leader",
                               leader=cluster.nodes[leader].client_address)
                if kind_of(case) == "read":  # the driver reads from `leader`: point it at the serving node
                    spec = replace(spec, leader=cluster.nodes[server].client_address)
                _drain(urls)
                spans = _run_client(spec, kind_of(case), a.ops, a.warmup)
                events = _drain(urls)
                events = {i: [e for e in evs if e[0] >= spans[0][0]] for i, evs in events.items()}
                b = breakdown(case, events, spans, leader, server)
                b["client"] = base.client
                results[case] = b
                print(f"  {case} [{base.client}]: p50 {b['p50_us']:.0f} µs; critical path found in "
                      f"{b['matched']} of {b['ops']} ops", file=sys.stderr, flush=True)
                doc.setdefault("sections", {})[
                    f"raftkv[{base.client}] {case}, c=1: critical path ({b['matched']} of {b['ops']} ops)"
                ] = hops_table(b)
    finally:
        os.environ.pop("RAFTKV_TRACE_HOPS", None)
    others = (["etcd"] if a.etcd else []) + (["floor"] if a.floor else [])
    for system in others:
        with running_cluster(system, out / "data" / system, base.nodes) as cluster:
            leader = cluster.leader_id()
            follower = next((i for i in sorted(cluster.nodes) if i != leader), leader)
            for case in cases:
                mode, target = CASES[case]
                server = leader if target == "leader" or kind_of(case) == "write" else follower
                spec = replace(base, system=system, mode=mode, concurrency=1, procs=1, read_target="leader",
                               endpoints=cluster.endpoints(), leader=cluster.nodes[server].client_address)
                spans = _run_client(spec, kind_of(case), a.ops, a.warmup)
                total = sorted((t1 - t0) / 1000 for t0, t1 in spans)
                e = {"p50_us": round(statistics.median(total), 1), "p90_us": round(total[int(0.9 * (len(total) - 1))], 1),
                     "p99_us": round(total[int(0.99 * (len(total) - 1))], 1)}
                results[case][system] = e
                print(f"  {system} {case}: p50 {e['p50_us']:.0f} µs", file=sys.stderr, flush=True)
    if others:
        head = "| case | raftkv p50 µs | p90 | p99 |" + "".join(f" {s} p50 µs | p90 | p99 |" for s in others)
        lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
        for case, b in results.items():
            row = f"| {case} | {b['p50_us']:.0f} | {b['p90_us']:.0f} | {b['p99_us']:.0f} |"
            for s in others:
                e = b.get(s, {})
                row += f" {e.get('p50_us', 0):.0f} | {e.get('p90_us', 0):.0f} | {e.get('p99_us', 0):.0f} |"
            lines.append(row)
        doc.setdefault("sections", {})[
            f"c=1 end to end, same client ({base.client}); floor = a KV server doing nothing"] = "\n".join(lines)
    doc["hops"] = results
    finish(doc, out)


def compare(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Markdown: each case's hops, p50 before and after, from two runs' results.json `hops`."""
    parts = []
    for case, a in after.items():
        b = before.get(case)
        if b is None:
            continue
        old = {h.get("step", h["hop"]): h for h in b["hops"]}
        lines = [f"**{case}** (c=1, {a.get('client', '')} client)", "",
                 "| until (time since the hop above) | before p50 µs | after p50 µs |", "|---|---|---|"]
        seen = set()
        for h in a["hops"]:
            key = h.get("step", h["hop"])
            o = old.get(key)
            seen.add(key)
            lines.append(f"| {h['hop']} | {o['p50_us']:.0f} | {h['p50_us']:.0f} |" if o else
                         f"| {h['hop']} | - | {h['p50_us']:.0f} |")
        lines += [f"| {o['hop']} | {o['p50_us']:.0f} | - |" for k, o in old.items() if k not in seen]
        lines.append(f"| **end to end** p50 (p99) | **{b['p50_us']:.0f}** ({b['p99_us']:.0f}) "
                     f"| **{a['p50_us']:.0f}** ({a['p99_us']:.0f}) |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def kind_of(case: str) -> str:
    return "write" if case == "write" else "read"


def add_parser(sub: Any, common: Any) -> None:
    p = sub.add_parser("hops", help="per-hop timeline of a lone (c=1) write and read, from the nodes' traces")
    common(p)
    p.add_argument("--cases", default=",".join(CASES), help=f"any of {', '.join(CASES)}")
    p.add_argument("--ops", type=int, default=400, help="operations per case (default 400)")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--etcd", action="store_true", help="also time the same client against etcd")
    p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"),
                   help="print two earlier runs' hops side by side (their results.json) and run nothing")
    p.add_argument("--floor", action="store_true",
                   help="also time the same client against the gRPC floor (benchmarks/floor_server.py)")
