"""Bounded-staleness reads: a read with bound B that began at time t returns a value at least as new as
every write acknowledged before t - B (times on the clients' one monotonic clock). Each key has a single
writer with increasing counters, so "as new as" is a comparison of counters. A read of a value never
written is flagged too.

A write whose outcome is unknown (its reply was lost) may take effect long after the writes that followed
it: its request can sit in a cut link's TCP buffer and reach the leader when the link heals, with a fresh
gRPC deadline. Its counter then says nothing about its age. All the history can prove is that it took
effect before the first read that returned it, so such a value must be as new as every write that was
sent after that read and acknowledged before t - B."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from ..history import Op
from .verdict import Verdict


def check_staleness(ops: Sequence[Op]) -> Verdict:
    v = Verdict("bounded-staleness", True)
    writes: dict[Any, list[Op]] = defaultdict(list)
    invoked: dict[Any, dict[Any, float]] = defaultdict(dict)
    for o in ops:
        if o.f == "write":
            invoked[o.key][o.arg] = o.start
            if o.ok:
                writes[o.key].append(o)
    ends: dict[Any, list[float]] = {}
    prefix_max: dict[Any, list[int]] = {}
    for key, ws in writes.items():
        ws.sort(key=lambda o: o.end)
        ends[key] = [w.end for w in ws]
        m, pm = -1, []
        for w in ws:
            m = max(m, w.arg)
            pm.append(m)
        prefix_max[key] = pm
    reads = [o for o in ops if o.f == "read" and o.ok]
    acked = {key: {w.arg for w in ws} for key, ws in writes.items()}
    first_seen: dict[Any, dict[Any, float]] = defaultdict(dict)
    for r in reads:
        seen = first_seen[r.key]
        if r.result is not None and r.end < seen.get(r.result, float("inf")):
            seen[r.result] = r.end
    worst = 0.0
    for r in reads:
        bound_s = r.arg["max_staleness_ms"] / 1000
        value = r.result
        if value is not None and (value not in invoked[r.key] or invoked[r.key][value] > r.end):
            v.valid = False
            v.anomalies.append({"type": "never-written", "read": r.describe()})
            continue
        after = float("-inf")  # newer writes count only from here (see the module docstring)
        if value is not None and value not in acked.get(r.key, ()):
            seen_at = after = first_seen[r.key][value]
            required = max((w.arg for w in writes[r.key] if w.start > seen_at and w.end < r.start - bound_s),
                           default=-1)
        else:
            i = bisect.bisect_left(ends.get(r.key, []), r.start - bound_s)
            if i == 0:
                continue
            required = prefix_max[r.key][i - 1]
        if value is None or value < required:
            v.valid = False
            if len(v.anomalies) < 20:
                v.anomalies.append({"type": "stale-beyond-bound", "required_at_least": required, "bound_ms":
                                    r.arg["max_staleness_ms"], "read": r.describe()})
        # How stale was it, as far as the history can tell: the first write newer than what was read.
        newer = [w.end for w in writes[r.key]
                 if w.arg > (value if value is not None else -1) and w.start > after and w.end < r.start]
        if newer:
            worst = max(worst, r.start - min(newer))
    v.ops_checked = len(reads) + sum(len(w) for w in writes.values())
    v.stats = {"reads": len(reads), "observed_max_staleness_ms": round(worst * 1000, 1),
               "served_by_nodes": sorted({r.node for r in reads if r.node is not None})}
    return v
