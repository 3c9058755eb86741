"""Session guarantees per client: read-your-writes and monotonic reads, across node switches.

Each client process writes its own key with increasing counters (through the leader) and reads keys with
`consistency=session` from whichever node it picked. A read returns the value and its mod revision.
- read-your-writes: a read of a key the process wrote returns a revision at least that write's index;
- monotonic reads: a read never returns an older revision of a key than one the process already saw.
Revisions, not values, are compared: a write whose outcome was unknown (a timeout) may still take effect
later, even after the process's next writes, and then it is rightly the newest value.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from ..history import Op
from .verdict import Verdict


def check_session(ops: Sequence[Op]) -> Verdict:
    v = Verdict("session", True)
    by_process: dict[Any, list[Op]] = defaultdict(list)
    for o in ops:
        if o.f in ("write", "read"):
            by_process[o.process].append(o)
    counts = {"ryw_violations": 0, "monotonic_violations": 0, "reads": 0, "writes": 0, "node_switches": 0}
    for p, pops in by_process.items():
        pops.sort(key=lambda o: o.start)
        seen_rev: dict[Any, int] = defaultdict(int)
        own_write: dict[Any, Op] = {}
        last_node = None
        for o in pops:
            if not o.ok:
                continue
            if o.f == "write":
                counts["writes"] += 1
                own_write[o.key] = o
                continue
            counts["reads"] += 1
            if last_node is not None and o.node != last_node:
                counts["node_switches"] += 1
            last_node = o.node
            rev = int(o.result.get("rev", 0))
            mine = own_write.get(o.key)
            if mine is not None and rev < int(mine.result):
                counts["ryw_violations"] += 1
                v.valid = False
                v.anomalies.append({"type": "read-your-writes", "process": p, "key": o.key,
                                    "wrote": mine.describe(), "read": o.describe()})
            elif rev < seen_rev[o.key]:
                counts["monotonic_violations"] += 1
                v.valid = False
                v.anomalies.append({"type": "monotonic-reads", "process": p, "key": o.key,
                                    "had_seen_revision": seen_rev[o.key], "read": o.describe()})
            seen_rev[o.key] = max(seen_rev[o.key], rev)
    v.ops_checked = counts["reads"] + counts["writes"]
    v.anomalies = v.anomalies[:20]
    v.stats = counts
    return v
