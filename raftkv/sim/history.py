"""Client histories from the host simulator, and the checks run on them after each run.

Every write puts a value unique in the run, so a read names the write it saw by its revision (the
write's log index, the key's mod_revision). Writes are ordered by revision; with that order known, the
checks below are exact for per-key registers:

- linearizable (linearizable and lease reads, majority and stronger writes): a read never sees a write
  invoked after it returned; never misses a write acknowledged before it was invoked; two reads in
  real-time order see revisions in that order; a write acknowledged before another was invoked has the
  lower revision;
- session: a session read sees at least the client's own acknowledged writes (a `leader`-level one only
  if it was not lost) and what the client read before (read-your-writes, monotonic reads), on whichever
  node serves it;
- bounded staleness: a read with bound B misses no write acknowledged more than B before it was invoked
  (in simulated real time);
- no acknowledged majority write is lost: after the final heal, a linearizable read of every key sees at
  least the newest acknowledged write of it.
Serializable reads and `leader`-level writes promise none of these and are only recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STRONG_WRITES = ("majority", "semi_sync", "sync")
LINEARIZABLE_READS = ("linearizable", "lease")


@dataclass(slots=True)
class Op:
    client: int
    kind: str  # "write" or "read"
    key: bytes
    level: str
    invoked: float
    completed: float = 0.0
    ok: bool = False
    """Acknowledged (a write) or answered (a read). A failed write may or may not have happened."""
    value: bytes = b""
    revision: int = 0
    """A write's index; a read's: the revision of the value it saw (0: none)."""
    node: int = 0
    bound_ms: float = 0.0
    error: str = ""
    lost: bool = False
    """An acknowledged `leader`-level write whose entry no node ever applied (it was lost, as such a write
    can be): it promises nothing, not even to its own session."""

    def line(self) -> str:
        t = f"{self.invoked * 1000:9.2f}..{self.completed * 1000:9.2f} ms"
        what = f"{self.kind} {self.key.decode()}@{self.level}"
        if self.bound_ms:
            what += f"<={self.bound_ms:.0f}ms"
        res = f"rev {self.revision}" + (f" {self.value.decode()}" if self.value else "") if self.ok else \
            f"failed ({self.error})"
        return f"{t}  c{self.client} n{self.node}  {what}: {res}"


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)

    def add(self, op: Op) -> Op:
        self.ops.append(op)
        return op

    def relevant(self, violation_ops: list[Op], around: int = 30) -> list[Op]:
        """A shrunk history for a report: only the keys involved, only acknowledged writes and answered
        reads (failed ones promise nothing), only what overlaps the offending ops' span, at most `around`
        of the nearest ops besides the offending ones."""
        keys = {o.key for o in violation_ops}
        if not violation_ops:
            return [o for o in self.ops if o.key in keys][-around:]
        first = min(o.invoked for o in violation_ops)
        last = max(o.completed for o in violation_ops)
        near = [o for o in self.ops if o.key in keys and o.ok and o not in violation_ops
                and o.completed >= first and o.invoked <= last]
        near.sort(key=lambda o: min(abs(o.invoked - first), abs(o.completed - last)))
        return sorted(near[:around] + violation_ops, key=lambda o: o.invoked)


class HistoryViolation(Exception):
    def __init__(self, check: str, detail: str, ops: list[Op]) -> None:
        super().__init__(f"{check}: {detail}")
        self.check = check
        self.detail = detail
        self.ops = ops


def check(history: History, final: dict[bytes, int]) -> None:
    """Raise HistoryViolation for the first broken guarantee; `final`: each key's revision as a
    linearizable read saw it after the final heal."""
    by_key: dict[bytes, list[Op]] = {}
    for o in history.ops:
        by_key.setdefault(o.key, []).append(o)
    for key, ops in by_key.items():
        _check_key(key, ops, final.get(key))
    _check_sessions(history)


def _check_key(key: bytes, ops: list[Op], final: int | None) -> None:
    # A lost `leader`-level write may share its revision with the write that took its place (an isolated
    # leader's log overwritten): no read saw it, so it never stands for that revision.
    writes = {o.revision: o for o in ops if o.kind == "write" and o.ok and not o.lost}
    acked = [o for o in writes.values() if o.level in STRONG_WRITES]
    all_writes = [o for o in ops if o.kind == "write"]
    for a in acked:
        for b in acked:
            if a.completed < b.invoked and a.revision >= b.revision:
                raise HistoryViolation("linearizable writes", f"write rev {a.revision} was acknowledged before "
                                       f"write rev {b.revision} began", [a, b])
    reads = [o for o in ops if o.kind == "read" and o.ok]
    for r in reads:
        if r.revision:
            w = writes.get(r.revision)
            if w is not None and w.invoked > r.completed:
                raise HistoryViolation("no read from the future", f"read saw rev {r.revision}, written after it "
                                       "returned", [r, w])
            if w is None and not any(o.invoked <= r.completed for o in all_writes):
                raise HistoryViolation("no read from nowhere", f"read saw rev {r.revision} of no write", [r])
        if r.level in LINEARIZABLE_READS:
            for w in acked:
                if w.completed < r.invoked and w.revision > r.revision:
                    raise HistoryViolation("linearizable read", f"read saw rev {r.revision}, but rev {w.revision} "
                                           "was acknowledged before the read began", [r, w])
        elif r.level == "bounded_staleness" and r.bound_ms:
            for w in acked:
                if w.completed < r.invoked - r.bound_ms / 1000 and w.revision > r.revision:
                    raise HistoryViolation("staleness bound", f"read with bound {r.bound_ms:.0f} ms saw rev "
                                           f"{r.revision}, but rev {w.revision} was acknowledged "
                                           f"{(r.invoked - w.completed) * 1000:.1f} ms before it began", [r, w])
    strong_reads = sorted((r for r in reads if r.level in LINEARIZABLE_READS), key=lambda o: o.invoked)
    for i, a in enumerate(strong_reads):
        for b in strong_reads[i + 1:]:
            if a.completed < b.invoked and b.revision < a.revision:
                raise HistoryViolation("linearizable read order", f"a read saw rev {a.revision}, a later one "
                                       f"rev {b.revision}", [a, b])
    if final is not None:
        for w in acked:
            if w.revision > final:
                raise HistoryViolation("no acknowledged write lost", f"write rev {w.revision} was acknowledged "
                                       f"({w.level}) but the final state of {key.decode()} is rev {final}", [w])


def _check_sessions(history: History) -> None:
    seen: dict[tuple[int, bytes], tuple[int, Op]] = {}
    for o in sorted(history.ops, key=lambda o: o.completed):
        if not o.ok or o.lost:
            continue
        k = (o.client, o.key)
        floor = seen.get(k)
        if o.kind == "read" and o.level == "session" and floor is not None and o.revision < floor[0]:
            raise HistoryViolation("session guarantees", f"client {o.client} read rev {o.revision} of "
                                   f"{o.key.decode()} after it had written or read rev {floor[0]}", [floor[1], o])
        if o.kind == "write" or o.level in ("session", *LINEARIZABLE_READS):
            if floor is None or o.revision > floor[0]:
                seen[k] = (o.revision, o)
