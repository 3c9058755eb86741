"""Bank histories: transfers between accounts must conserve money, so every read of all accounts
(each read is one consistent snapshot of the state machine) sums to the constant total, with every
account present and none negative.

A serializable read may return any committed state, including the empty one from before the accounts
were created (a node that has not applied that far, or a member that has just joined empty): an empty
answer to a serializable read is counted, not flagged. A partial set of accounts is always an anomaly,
since all accounts are created in one transaction."""

from __future__ import annotations

from collections.abc import Sequence

from ..history import Op
from .verdict import Verdict


def check_bank(ops: Sequence[Op], accounts: Sequence[str], total: int) -> Verdict:
    v = Verdict("bank", True)
    reads = [o for o in ops if o.f in ("read", "final-read") and o.ok]
    transfers = [o for o in ops if o.f == "transfer"]
    v.ops_checked = len(reads) + len(transfers)
    bad = empty = 0
    for r in reads:
        balances: dict[str, int] = r.result or {}
        if not balances and isinstance(r.arg, dict) and r.arg.get("consistency") == "serializable":
            empty += 1
            continue
        problems = []
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
    v.stats = {"reads": len(reads), "bad_reads": bad, "empty_serializable_reads": empty,
               "transfers_ok": sum(1 for o in transfers if o.ok),
               "transfers_indeterminate": sum(1 for o in transfers if o.status == "info")}
    return v
