"""Bank histories: transfers between accounts must conserve money, so every read of all accounts
(each read is one consistent snapshot of the state machine) sums to the constant total, with every
account present and none negative.

All accounts are created by one transaction before the run (the `setup` operation records its log
index). A serializable read may return any committed state, including the empty one from before that
transaction, but only from a node that has not applied it yet: each read records the applied index of
the node that served it, and an empty answer is excused (and counted) only below the creation index. An
empty answer from a node that had applied the creation, from a linearizable read, or with no applied
index recorded is an anomaly. A partial set of accounts is always an anomaly.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..history import Op
from .verdict import Verdict


def check_bank(ops: Sequence[Op], accounts: Sequence[str], total: int) -> Verdict:
    v = Verdict("bank", True)
    reads = [o for o in ops if o.f in ("read", "final-read") and o.ok]
    transfers = [o for o in ops if o.f == "transfer"]
    v.ops_checked = len(reads) + len(transfers)
    created = next((o.result["index"] for o in ops if o.f == "setup" and o.ok and isinstance(o.result, dict)), None)
    bad = empty = 0
    for r in reads:
        balances: dict[str, int] = r.result or {}
        problems = []
        if not balances and isinstance(r.arg, dict) and r.arg.get("consistency") == "serializable":
            applied = r.extra.get("applied")
            if created is not None and applied is not None and applied < created:
                empty += 1  # that node had not applied the accounts' creation yet
                continue
            problems.append(f"empty serializable read from a node at applied index {applied}, "
                            f"accounts created at index {created}")
        missing = [a for a in accounts if a not in balances]
        if missing:
            problems.append(f"missing accounts {missing}")
        extra = [a for a in balances if a not in accounts]
        if extra:
            problems.append(f"unknown accounts {extra}")
        negative = {a: b for a, b in balances.items() if b < 0}
        if negative:
            problems.append(f"negative balances {negative}")
        s = sum(balances.values())
        if s != total:
            problems.append(f"total {s} != {total}")
        if problems:
            bad += 1
            v.valid = False
            if len(v.anomalies) < 20:
                v.anomalies.append({"type": "bad-read", "problems": problems, "read": r.describe()})
    if not any(o.f == "final-read" for o in reads):
        v.valid = False
        v.anomalies.append({"type": "no-final-read",
                            "message": "the cluster did not answer a final read after every fault healed"})
    v.stats = {"reads": len(reads), "bad_reads": bad, "empty_serializable_reads": empty, "created_index": created,
               "transfers_ok": sum(1 for o in transfers if o.ok),
               "transfers_indeterminate": sum(1 for o in transfers if o.status == "info")}
    return v
