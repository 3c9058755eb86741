"""Set / append histories: every acknowledged addition must be present at the end.

Operations: `add` (arg = element, key = the set it goes to) and reads of a whole set, `read` during the
run and `final-read` after every fault has healed (result = list of elements). Anomalies:
- lost: an acknowledged add missing from the final read (or from a read that began after it was acked:
  reads are linearizable, so that read is stale);
- duplicate: an element present twice (an add applied twice);
- unexpected: an element nobody tried to add (a read of a never-written value).
With `expect_loss` (writes acknowledged by the leader alone, before commit) losses are counted and
reported but are the documented risk of that level, not a failure.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from ..history import Op
from .verdict import Verdict


def check_set(ops: Sequence[Op], name: str = "set", expect_loss: bool = False, max_listed: int = 20) -> Verdict:
    adds: dict[Any, list[Op]] = defaultdict(list)
    reads: dict[Any, list[Op]] = defaultdict(list)
    finals: dict[Any, Op] = {}
    for o in ops:
        if o.f == "add":
            adds[o.key].append(o)
        elif o.f == "read" and o.ok:
            reads[o.key].append(o)
        elif o.f == "final-read" and o.ok:
            if o.key not in finals or o.start > finals[o.key].start:
                finals[o.key] = o
    v = Verdict(name, True, ops_checked=sum(len(a) for a in adds.values()) + sum(len(r) for r in reads.values()))
    stats: dict[str, Any] = {"acknowledged": 0, "lost": 0, "indeterminate": 0, "recovered_indeterminate": 0,
                             "failed": 0, "duplicates": 0, "unexpected": 0, "stale_reads": 0}
    for key in sorted(set(adds) | set(finals), key=str):
        attempted = {_h(o.arg) for o in adds[key]}
        acked = [o for o in adds[key] if o.ok]
        stats["acknowledged"] += len(acked)
        stats["failed"] += sum(1 for o in adds[key] if o.status == "fail")
        info = [o for o in adds[key] if o.status == "info"]
        stats["indeterminate"] += len(info)
        for r in reads[key] + ([finals[key]] if key in finals else []):
            present = Counter(_h(x) for x in (r.result or []))
            dups = [x for x, c in present.items() if c > 1]
            if dups:
                stats["duplicates"] += len(dups)
                v.valid = False
                v.anomalies.append({"type": "duplicate", "key": key, "elements": dups[:max_listed], "read": r.describe()})
            unexpected = [x for x in present if x not in attempted]
            if unexpected:
                stats["unexpected"] += len(unexpected)
                v.valid = False
                v.anomalies.append({"type": "unexpected", "key": key, "elements": unexpected[:max_listed],
                                    "read": r.describe()})
            if r.f == "read":
                stale = [o.arg for o in acked if o.end < r.start and _h(o.arg) not in present]
                if stale:
                    stats["stale_reads"] += 1
                    if not expect_loss:
                        v.valid = False
                        v.anomalies.append({"type": "stale-read", "key": key, "missing": stale[:max_listed],
                                            "read": r.describe()})
        if key not in finals:
            if adds[key]:
                v.valid = False
                v.anomalies.append({"type": "no-final-read", "key": key,
                                    "message": "the cluster did not answer a final read after every fault healed"})
            continue
        final = {_h(x) for x in (finals[key].result or [])}
        lost = [o.arg for o in acked if _h(o.arg) not in final]
        stats["lost"] += len(lost)
        stats["recovered_indeterminate"] += sum(1 for o in info if _h(o.arg) in final)
        if lost:
            entry = {"type": "lost", "key": key, "count": len(lost), "elements": lost[:max_listed]}
            if expect_loss:
                entry["expected"] = "acknowledged by the leader alone, before commit (documented risk)"
            else:
                v.valid = False
            v.anomalies.append(entry)
    v.stats = stats
    return v


def _h(x: Any) -> Any:
    return tuple(x) if isinstance(x, list) else x
