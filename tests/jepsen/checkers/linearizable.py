"""Linearizability of a key-value register history (read / write / cas), checked per key.

The search is Wing & Gong's, with Lowe's improvements as in Porcupine: the history becomes a list of
call and return entries ordered by time; the search linearizes a call whose every predecessor is done,
backtracks when it meets a return whose call it could not place, and memoises (set of linearized ops,
register state) so no configuration is explored twice. Keys are independent (P-compositionality), so each
key is checked alone.

Indeterminate (`info`) operations return at infinity: they may take effect at any point after their
invocation or never (for a write that never took effect, linearizing it last changes nothing observable;
a cas is deterministic given the state). Failed operations certainly did not happen and are dropped; so
are reads whose outcome is unknown.

On failure the checker shrinks the key's history to a small sub-history that is still not linearizable
(keeping every write whose value someone read or compared against) and reports it as the counterexample.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..history import INF, Op
from .verdict import Verdict

NOT_FOUND = None


def step(state: Any, op: Op) -> tuple[bool, Any]:
    """The register model: does `op` (with its observed result) fit `state`, and what state follows."""
    if op.f == "read":
        return op.result == state, state
    if op.f == "write":
        return True, op.arg
    if op.f == "cas":
        old, new = op.arg
        if op.status != "ok":  # outcome unknown: the cas did whatever the state made it do
            return True, new if state == old else state
        if op.result:
            return state == old, new
        return state != old, state
    raise ValueError(f"register model has no operation {op.f!r}")


class _Entry:
    __slots__ = ("op", "call", "match", "prev", "next", "bit")

    def __init__(self, op: Op, call: bool, bit: int) -> None:
        self.op, self.call, self.bit = op, call, bit
        self.match: _Entry | None = None
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


@dataclass
class Search:
    ok: bool | None
    explored: int
    max_linearized: int


def _relevant(ops: Sequence[Op]) -> list[Op]:
    return [o for o in ops if o.status == "ok" or (o.status == "info" and o.f != "read")]


def linearizable(ops: Sequence[Op], init: Any = NOT_FOUND, budget_s: float = 60.0) -> Search:
    """Is this single-key history linearizable? ok=None when the budget ran out."""
    ops = _relevant(ops)
    events: list[tuple[float, int, _Entry]] = []
    for bit, op in enumerate(ops):
        call, ret = _Entry(op, True, bit), _Entry(op, False, bit)
        call.match, ret.match = ret, call
        # A call sorts before a return at the same instant: such ops count as concurrent.
        events.append((op.start, 0, call))
        events.append((op.end if op.status == "ok" else INF, 1, ret))
    events.sort(key=lambda e: (e[0], e[1]))
    head = _Entry(None, False, -1)  # type: ignore[arg-type]
    prev = head
    for _, _, e in events:
        prev.next, e.prev = e, prev
        prev = e

    def lift(e: _Entry) -> None:
        e.prev.next = e.next
        if e.next:
            e.next.prev = e.prev
        m = e.match
        m.prev.next = m.next
        if m.next:
            m.next.prev = m.prev

    def unlift(e: _Entry) -> None:
        m = e.match
        m.prev.next = m
        if m.next:
            m.next.prev = m
        e.prev.next = e
        if e.next:
            e.next.prev = e

    deadline = time.monotonic() + budget_s
    cache: set[tuple[int, Any]] = set()
    stack: list[tuple[_Entry, Any]] = []
    state, linearized, explored, best = init, 0, 0, 0
    entry = head.next
    while head.next is not None:
        explored += 1
        if explored & 0xFFF == 0 and time.monotonic() > deadline:
            return Search(None, explored, best)
        assert entry is not None
        if entry.call:
            fits, new_state = step(state, entry.op)
            if fits:
                lin = linearized | (1 << entry.bit)
                try:
                    key = (lin, new_state)
                    seen = key in cache
                except TypeError:  # unhashable state: compare by repr
                    key = (lin, repr(new_state))
                    seen = key in cache
                if not seen:
                    cache.add(key)
                    stack.append((entry, state))
                    state, linearized = new_state, lin
                    best = max(best, len(stack))
                    lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            if not stack:
                return Search(False, explored, best)
            entry, state = stack.pop()
            linearized &= ~(1 << entry.bit)
            unlift(entry)
            entry = entry.next
    return Search(True, explored, best)


def _written(o: Op) -> Any:
    return _h(o.arg if o.f == "write" else o.arg[1])


def _failed_cas(o: Op) -> bool:
    return o.f == "cas" and o.ok and o.result is False


def _needed_values(ops: Sequence[Op]) -> set[Any]:
    """Values that some op in `ops` needs to have been written: what reads returned and what a
    successful cas found."""
    vals: set[Any] = set()
    for o in ops:
        if o.f == "read":
            vals.add(_h(o.result))
        elif o.f == "cas" and o.ok and o.result:
            vals.add(_h(o.arg[0]))
    return vals


def _h(v: Any) -> Any:
    try:
        hash(v)
        return v
    except TypeError:
        return repr(v)


def _with_writers(history: Sequence[Op], window: Sequence[Op], init: Any) -> list[Op]:
    """`window` plus the op that wrote each value it needs, without failed cas ops whose compared value
    was written outside it (without the writes in between they could fail for no real reason)."""
    written = {_written(o) for o in window if o.f != "read"}
    writer = {_written(o): o for o in history if o.f != "read"}
    out = [o for o in window if not (_failed_cas(o) and _h(o.arg[0]) not in written)]
    while True:  # a writer brought in may itself need a value (a cas), so close over them
        missing = [v for v in _needed_values(out) - written - {_h(init)} if v in writer]
        if not missing:
            return sorted(out, key=lambda o: o.start)
        for v in missing:
            out.append(writer[v])
            written.add(v)


def shrink(ops: Sequence[Op], init: Any = NOT_FOUND, budget_s: float = 20.0, max_greedy: int = 120) -> list[Op]:
    """A small sub-history that is still not linearizable.

    Removing an op can make a history *harder* to linearize only by taking away a value someone needs
    (a read's value, a successful cas's expected value) or the intermediate writes that let a failed cas
    fail; so the shrinking keeps the writers of needed values, prefers a history without failed cas ops
    (and then removes unneeded writes), and otherwise removes only reads and failed cas ops. Steps: the
    shortest failing prefix (by invocation), then the shortest failing tail window of it with the
    writers it needs, then ops removed one at a time while the rest keeps failing."""
    deadline = time.monotonic() + budget_s
    ops = sorted(_relevant(ops), key=lambda o: o.start)

    def fails(sub: Sequence[Op]) -> bool:
        left = max(0.5, deadline - time.monotonic())
        return linearizable(sub, init, budget_s=min(5.0, left)).ok is False

    without_failed_cas = [o for o in ops if not _failed_cas(o)]
    writes_removable = fails(without_failed_cas)
    if writes_removable:
        ops = without_failed_cas
    lo, hi = 1, len(ops)
    while lo < hi:
        mid = (lo + hi) // 2
        if fails(_with_writers(ops, ops[:mid], init)):
            hi = mid
        else:
            lo = mid + 1
    prefix = ops[:hi]
    cur = _with_writers(ops, prefix, init)
    for w in (4, 8, 16, 32, 64, max_greedy):
        if w >= len(prefix):
            break
        window = _with_writers(ops, prefix[-w:], init)
        if fails(window):
            cur = window
            break
    if len(cur) <= max_greedy:
        i = len(cur) - 1
        while i >= 0 and time.monotonic() < deadline:
            o = cur[i]
            trial = cur[:i] + cur[i + 1:]
            removable = o.f == "read" or _failed_cas(o) or (
                writes_removable and _written(o) not in _needed_values(trial))
            if removable and fails(trial):
                cur = trial
            i -= 1
    return cur


def check_register(ops: Sequence[Op], budget_s: float = 60.0) -> Verdict:
    """Linearizability of read/write/cas ops, decomposed by key."""
    by_key: dict[Any, list[Op]] = defaultdict(list)
    for o in ops:
        if o.f in ("read", "write", "cas"):
            by_key[o.key].append(o)
    verdict = Verdict("linearizable", True)
    started = time.monotonic()
    explored = 0
    for key, kops in sorted(by_key.items(), key=lambda kv: str(kv[0])):
        verdict.ops_checked += len(kops)
        res = linearizable(kops, budget_s=budget_s)
        explored += res.explored
        if res.ok is None:
            verdict.valid = None if verdict.valid is not False else False
            verdict.anomalies.append({"type": "undecided", "key": key,
                                      "message": f"search budget of {budget_s}s ran out"})
        elif res.ok is False:
            verdict.valid = False
            cex = shrink(kops)
            verdict.anomalies.append({"type": "nonlinearizable", "key": key, "ops": len(kops),
                                      "counterexample": [o.describe() for o in cex]})
    verdict.stats = {"keys": len(by_key), "configurations_explored": explored,
                     "check_seconds": round(time.monotonic() - started, 3),
                     "indeterminate": sum(1 for o in ops if o.status == "info" and o.f in ("write", "cas"))}
    return verdict
