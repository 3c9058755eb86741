"""After every fault has healed: do all members hold the same data?

The run's checkers judge what clients saw; this judges what the members store. Once the cluster is
quiet, every member must apply up to the leader's commit index, and then a full serializable range of
each member (its own state, paged) must equal the leader's, key by key: value, create and mod revision,
version. A member that never catches up, does not answer, or answers different data is an anomaly:
divergence is exactly what a node that forgot its votes or log, or a corrupted record, produces."""

from __future__ import annotations

import time
from typing import Any

from raftkv.client import Client, RaftKVError

from .verdict import Verdict

Record = tuple[bytes, int, int, int]


def full_range(client: Client, endpoint: str, page: int = 500) -> dict[bytes, Record]:
    """Every key of one member, from its own state (serializable), a page at a time."""
    out: dict[bytes, Record] = {}
    start = b"\0"
    while True:
        r = client.range(start, b"\0", limit=page, consistency="serializable", endpoint=endpoint, timeout=5)
        for kv in r.kvs:
            out[kv.key] = (kv.value, kv.create_revision, kv.mod_revision, kv.version)
        if not r.more or not r.kvs:
            return out
        start = r.kvs[-1].key + b"\0"


RANGE_ATTEMPTS = 3
"""Tries of a member's full range (5 s each) before it counts as not answering."""


def check_members_agree(members: dict[int, str], leader_id: int, catch_up_s: float = 30.0) -> Verdict:
    """`members`: member id -> address of every current member; `leader_id` one of them."""
    v = Verdict("members-agree", True)
    with Client(list(members.values()), timeout=5) as c:
        try:
            target = c.status(endpoint=members[leader_id], timeout=5).commit
        except RaftKVError as e:
            v.valid = False
            v.anomalies.append({"type": "no-leader-status", "message": str(e)[:200]})
            return v
        deadline = time.monotonic() + catch_up_s
        lagging = dict.fromkeys(members, 0)
        while lagging and time.monotonic() < deadline:
            for mid in list(lagging):
                try:
                    applied = c.status(endpoint=members[mid], timeout=2).applied
                except RaftKVError:
                    continue
                lagging[mid] = applied
                if applied >= target:
                    del lagging[mid]
            if lagging:
                time.sleep(0.2)
        for mid, applied in lagging.items():
            v.valid = False
            v.anomalies.append({"type": "not-caught-up", "member": mid, "applied": applied, "commit": target})
        states: dict[int, dict[bytes, Record]] = {}
        retried: dict[int, list[str]] = {}
        for mid, addr in members.items():
            if mid in lagging:
                continue
            # A member whose event loop stands still for a few seconds (a starved machine: its log says
            # `event loop stalled`) misses one range's deadline; it is asked again, a bounded number of
            # times, and the retries are reported. One that never answers fails the check.
            for attempt in range(RANGE_ATTEMPTS):
                try:
                    states[mid] = full_range(c, addr)
                    break
                except RaftKVError as e:
                    retried.setdefault(mid, []).append(str(e)[:200])
                    if attempt == RANGE_ATTEMPTS - 1:
                        v.valid = False
                        v.anomalies.append({"type": "no-range", "member": mid, "errors": retried[mid]})
    ref = states.get(leader_id)
    stats: dict[str, Any] = {"members": sorted(members), "compared": sorted(states), "commit": target,
                             "keys": len(ref) if ref is not None else None,
                             "range_retries": {mid: len(errs) for mid, errs in retried.items()}}
    if ref is not None:
        for mid, state in states.items():
            if mid == leader_id:
                continue
            diff = sorted(k for k in set(ref) | set(state) if ref.get(k) != state.get(k))
            if diff:
                v.valid = False
                v.anomalies.append({"type": "divergence", "member": mid, "leader": leader_id, "keys": len(diff),
                                    "examples": [{"key": k.decode(errors="replace"),
                                                  "leader": _show(ref.get(k)), "member": _show(state.get(k))}
                                                 for k in diff[:5]]})
    v.ops_checked = sum(len(s) for s in states.values())
    v.stats = stats
    return v


def _show(rec: Record | None) -> Any:
    if rec is None:
        return None
    return {"value": rec[0][:80].decode(errors="replace"), "create": rec[1], "mod": rec[2], "version": rec[3]}


def check_corruption_probes(probes: list[dict[str, Any]]) -> Verdict:
    """A node must never serve a value whose stored bytes were corrupted (refusing, DATA_LOSS, is right)."""
    v = Verdict("no-corrupt-value-served", True, ops_checked=len(probes))
    for p in probes:
        if p.get("served") == "corrupted":
            v.valid = False
            v.anomalies.append({"type": "corrupt-value-served", **p})
    outcomes: dict[str, int] = {}
    for p in probes:
        key = str(p.get("served", "?")).split(":")[0]
        outcomes[key] = outcomes.get(key, 0) + 1
    v.stats = {"probes": len(probes), "outcomes": outcomes}
    return v
