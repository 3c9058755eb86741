"""Workloads: what the clients do during a run, what they read once every fault has healed, and which
checkers judge the history.

Every operation is recorded as invoke + ok/fail/info. A read that errs simply failed (reads change
nothing). A write that errs is `fail` only when the server certainly did not apply it (refused as
invalid or by a failed precondition); any other error, a timeout above all, is `info`: it may have
happened, and the checkers must allow both.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from raftkv.client import Client, OutcomeUnknownError, RaftKVError, compare, op_put
from raftkv.proto.stubs import kv_pb2 as pb

from .checkers import Verdict
from .checkers.bank import check_bank
from .checkers.linearizable import check_register
from .checkers.session import check_session
from .checkers.sets import check_set
from .checkers.staleness import check_staleness
from .history import History, Op

CERTAIN_FAILURES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                    grpc.StatusCode.NOT_FOUND}
# Refusals the server makes before proposing, whatever their status code: a node under the NOSPACE alarm,
# a request over --max-request-bytes, a leader whose Raft loop is held up. (The client raises
# OutcomeUnknownError instead if an earlier try of the same request might have been applied.)
CERTAIN_REASONS = {"NOSPACE", "REQUEST_TOO_LARGE", "RAFT_LOOP_HELD_UP"}


def write_status(err: RaftKVError) -> str:
    """"fail" for an error that proves the write was not applied, else "info" (indeterminate).

    Counting a certain refusal as indeterminate is safe but costly: each one multiplies the orders the
    linearizability search must try, and a run with hundreds of NOSPACE refusals ran out of budget."""
    certain = err.code in CERTAIN_FAILURES or err.reason in CERTAIN_REASONS
    return "fail" if certain and not isinstance(err, OutcomeUnknownError) else "info"


class Workload:
    name = "base"
    workers = 5
    pause_s = 0.01
    server_flags: tuple[str, ...] = ()
    """Extra `raftkv serve` flags the nodes of this workload's runs are started with."""
    matrix_nemeses: tuple[str, ...] | None = None
    """The nemeses the matrix pairs this workload with (None: every one)."""
    client_options: dict[str, Any] = {}
    """Extra `Client` arguments of the workers (e.g. exactly_once)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def unique(self) -> int:
        with self._lock:
            return next(self._ids)

    def setup(self, client: Client) -> None:
        """Initial state, written before the nemesis starts."""

    def started(self, h: History) -> None:
        """Record in the run's history what `setup` did, for the checkers (the setup itself ran before
        the history began)."""

    def step(self, p: int, client: Client, h: History, rng: random.Random, endpoints: list[str]) -> None:
        raise NotImplementedError

    def final(self, client: Client, h: History) -> None:
        """Reads after every fault has healed."""

    def stop(self) -> None:
        """Ends whatever the workload runs beside its steps (the watch workload's watchers), once the run is
        over, passed or failed: nothing of one run may live on into the next."""

    def check(self, ops: list[Op]) -> list[Verdict]:
        raise NotImplementedError

    # -- recording helpers ---------------------------------------------------------------------
    @staticmethod
    def write(h: History, p: int, f: str, key: str, arg: Any, fn: Callable[[], Any],
              result: Callable[[Any], Any] = lambda r: None) -> tuple[str, Any]:
        op = h.invoke(p, f, key, arg)
        try:
            reply = fn()
        except RaftKVError as e:
            status = write_status(e)
            h.complete(op, status, error=_short(e))
            return status, None
        value = result(reply)
        meta = getattr(reply, "meta", None)
        h.complete(op, "ok", value, node=getattr(meta, "served_by", None))
        return "ok", value

    @staticmethod
    def read(h: History, p: int, f: str, key: str | None, arg: Any, fn: Callable[[], Any],
             result: Callable[[Any], Any], **extra: Callable[[Any], Any]) -> tuple[str, Any]:
        op = h.invoke(p, f, key, arg)
        try:
            reply = fn()
        except RaftKVError as e:
            h.complete(op, "fail", error=_short(e))
            return "fail", None
        value = result(reply)
        h.complete(op, "ok", value, node=reply.meta.served_by, **{k: g(reply) for k, g in extra.items()})
        return "ok", value

    def final_retry(self, fn: Callable[[], tuple[str, Any]], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, _ = fn()
            if status == "ok":
                return
            time.sleep(0.3)


def _short(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e)[:160]}"


def _int(raw: bytes) -> int:
    return int(raw.decode())


def _applied(rep: Any) -> int:
    """The serving node's applied index when it read: what its answer reflects."""
    return rep.meta.applied_index


# -------------------------------------------------------------------------------------------------
class Register(Workload):
    """put / get / cas on a handful of keys; each written value is unique. Checked for linearizability."""

    name = "register"
    keys = [f"reg/{i}" for i in range(3)]
    read_consistency = "default"
    read_extra: dict[str, Callable[[Any], Any]] = {}

    def read_endpoint(self, rng: random.Random, endpoints: list[str]) -> str | None:
        """Where a read goes: a third of them to a node chosen at random (a follower serves a linearizable
        read after a ReadIndex round through the leader, so the checker sees more than the leader's
        answers), the rest wherever the client sends them (None: the leader it knows)."""
        return rng.choice(endpoints) if rng.random() < 1 / 3 else None

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.last_seen: dict[int, dict[str, int | None]] = {}

    def step(self, p: int, client: Client, h: History, rng: random.Random, endpoints: list[str]) -> None:
        key = rng.choice(self.keys)
        seen = self.last_seen.setdefault(p, {})
        r = rng.random()
        if r < 0.5:
            ep = self.read_endpoint(rng, endpoints)
            _, v = self.read(h, p, "read", key, None,
                             lambda: client.get(key, consistency=self.read_consistency, endpoint=ep),
                             lambda rep: _int(rep.kv.value) if rep.found else None, **self.read_extra)
            seen[key] = v
        elif r < 0.8 or seen.get(key) is None:
            v = self.unique()
            self.write(h, p, "write", key, v, lambda: client.put(key, str(v)))
        else:
            old, new = seen[key], self.unique()
            self.write(h, p, "cas", key, [old, new],
                       lambda: client.txn([compare(key, "value", "=", str(old))], [op_put(key, str(new))]),
                       lambda rep: rep.succeeded)

    def final(self, client: Client, h: History) -> None:
        for key in self.keys:
            self.final_retry(lambda key=key: self.read(h, "final", "read", key, None, lambda: client.get(key),
                                                       lambda rep: _int(rep.kv.value) if rep.found else None))

    def check(self, ops: list[Op]) -> list[Verdict]:
        v = check_register(ops)
        answered = {o.key for o in ops if o.process == "final" and o.ok}
        for key in self.keys:
            if key not in answered:  # a cluster that no longer answers after every fault healed
                v.valid = False
                v.anomalies.append({"type": "no-final-read", "key": key,
                                    "message": "the cluster did not answer a final read after every fault healed"})
        return [v]


class RetryingRegister(Register):
    """The register with exactly-once writes on (`Client(exactly_once=True)`): a put or cas whose outcome
    became unknown (its leader killed, its connection cut) is retried with its sequence number, so the
    history holds far fewer indeterminate writes, and must stay linearizable: a retry applied twice would
    write its value again after another client's write."""

    name = "register-retries"
    client_options: dict[str, Any] = {"exactly_once": True}


# -------------------------------------------------------------------------------------------------
def _level(rep: Any) -> str:
    return pb.Consistency.Name(rep.meta.consistency_achieved)


class LeaseRegister(Register):
    """The register workload with `lease` reads, on nodes started with --lease-reads, checked for
    linearizability like any read. A leader answers them from its lease (an election timeout minus the
    drift margin after it sent a round of heartbeats a quorum confirmed, on its own clock), or after a
    ReadIndex round once the lease has lapsed; the history records which (`level`). A run in which no read
    was answered from a lease tested nothing and fails. Reads go to a node picked at random."""

    name = "lease-read"
    server_flags = ("--lease-reads",)
    matrix_nemeses = ("pause-leader", "kill-leader", "isolate-leader", "mixed")
    read_consistency = "lease"
    read_extra = {"level": _level}

    def read_endpoint(self, rng: random.Random, endpoints: list[str]) -> str | None:
        # Any node: a follower forwards to the leader, and a paused leader gets reads that wait in its
        # socket and are answered the moment it resumes -- from its lease, if it wrongly thinks it holds one.
        return rng.choice(endpoints)

    def check(self, ops: list[Op]) -> list[Verdict]:
        verdicts = super().check(ops)
        reads = [o for o in ops if o.f == "read" and o.ok and o.process != "final"]
        levels: dict[str, int] = {}
        for o in reads:
            levels[o.extra.get("level", "?")] = levels.get(o.extra.get("level", "?"), 0) + 1
        served = Verdict("lease-reads-served", levels.get("LEASE", 0) > 0, len(reads), stats={"levels": levels})
        if not served.valid:
            served.anomalies.append({"type": "no-lease-read", "message": "no read was answered from a lease"})
        return [*verdicts, served]


# -------------------------------------------------------------------------------------------------
class Append(Workload):
    """Append unique elements to a few lists by compare-and-swap on the key's mod revision; every
    acknowledged append must be in the final lists, once."""

    name = "set"
    keys = [f"set/{i}" for i in range(4)]

    def _get(self, client: Client, key: str) -> tuple[list[int], int]:
        rep = client.get(key)
        return (json.loads(rep.kv.value) if rep.found else []), (rep.kv.mod_revision if rep.found else 0)

    def step(self, p: int, client: Client, h: History, rng: random.Random, endpoints: list[str]) -> None:
        key = rng.choice(self.keys)
        if rng.random() < 0.2:
            self.read(h, p, "read", key, None, lambda: client.get(key),
                      lambda rep: json.loads(rep.kv.value) if rep.found else [])
            return
        elem = self.unique()
        op = h.invoke(p, "add", key, elem)
        for _ in range(8):
            try:
                items, rev = self._get(client, key)
            except RaftKVError as e:
                h.complete(op, "fail", error=_short(e))  # nothing was written yet
                return
            try:
                rep = client.txn([compare(key, "mod", "=", rev)], [op_put(key, json.dumps(items + [elem]))])
            except RaftKVError as e:
                h.complete(op, write_status(e), error=_short(e))
                return
            if rep.succeeded:
                h.complete(op, "ok", node=rep.meta.served_by)
                return
        h.complete(op, "fail", error="contention: compare kept failing")

    def final(self, client: Client, h: History) -> None:
        for key in self.keys:
            self.final_retry(lambda key=key: self.read(
                h, "final", "final-read", key, None, lambda: client.get(key),
                lambda rep: json.loads(rep.kv.value) if rep.found else []))

    def check(self, ops: list[Op]) -> list[Verdict]:
        return [check_set(ops, "set")]


# -------------------------------------------------------------------------------------------------
class AckLevels(Workload):
    """Unique puts acknowledged by the leader alone (`ack=leader`) beside majority-acknowledged ones.
    Majority writes must never be lost; leader-acked writes may be, when the leader dies before a
    majority has them: the suite counts those to document the risk."""

    name = "ack-levels"
    groups = {"leader": "la", "majority": "ma"}

    def step(self, p: int, client: Client, h: History, rng: random.Random, endpoints: list[str]) -> None:
        level = rng.choice(list(self.groups))
        group = self.groups[level]
        elem = self.unique()
        self.write(h, p, "add", group, elem, lambda: client.put(f"{group}/{elem:08d}", "1", ack=level))

    def final(self, client: Client, h: History) -> None:
        for group in self.groups.values():
            self.final_retry(lambda group=group: self.read(
                h, "final", "final-read", group, None, lambda: client.range(f"{group}/", prefix=True, keys_only=True),
                lambda rep, g=group: [int(kv.key.decode()[len(g) + 1:]) for kv in rep.kvs]))

    def check(self, ops: list[Op]) -> list[Verdict]:
        leader = [o for o in ops if o.key == "la"]
        majority = [o for o in ops if o.key == "ma"]
        return [check_set(majority, "lost-writes-majority"),
                check_set(leader, "lost-writes-leader-ack", expect_loss=True)]


# -------------------------------------------------------------------------------------------------
class Bank(Workload):
    """Transfers between accounts in one Txn each, guarded by compares on both balances; reads of all
    accounts (linearizable, and serializable from any node) must always sum to the total."""

    name = "bank"
    accounts = [f"bank/a{i}" for i in range(5)]
    total = 100

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.created_index = 0

    def setup(self, client: Client) -> None:
        each = self.total // len(self.accounts)
        self.created_index = client.txn([], [op_put(a, str(each)) for a in self.accounts]).meta.index

    def started(self, h: History) -> None:
        op = h.invoke("setup", "setup")
        h.complete(op, "ok", {"index": self.created_index})

    def _balances(self, rep: Any) -> dict[str, int]:
        return {kv.key.decode(): _int(kv.value) for kv in rep.kvs}

    def step(self, p: int, client: Client, h: History, rng: random.Random, endpoints: list[str]) -> None:
        r = rng.random()
        if r < 0.25:
            ep = rng.choice(endpoints)
            self.read(h, p, "read", None, {"consistency": "serializable", "node": ep},
                      lambda: client.range("bank/", prefix=True, consistency="serializable", endpoint=ep),
                      self._balances, applied=_applied)
            return
        status, bal = self.read(h, p, "read", None, {"consistency": "linearizable"},
                                lambda: client.range("bank/", prefix=True), self._balances, applied=_applied)
        if status != "ok" or r < 0.4:
            return
        src, dst = rng.sample([a for a in self.accounts if a in bal], 2)
        amount = rng.randint(1, 5)
        if bal[src] < amount:
            return
        self.write(h, p, "transfer", None, {"from": src, "to": dst, "amount": amount},
                   lambda: client.txn([compare(src, "value", "=", str(bal[src])),
                                       compare(dst, "value", "=", str(bal[dst]))],
                                      [op_put(src, str(bal[src] - amount)), op_put(dst, str(bal[dst] + amount))]),
                   lambda rep: rep.succeeded)

    def final(self, client: Client, h: History) -> None:
        self.final_retry(lambda: self.read(h, "final", "final-read", None, None,
                                           lambda: client.range("bank/", prefix=True), self._balances,
                                           applied=_applied))

    def check(self, ops: list[Op]) -> list[Verdict]:
        return [check_bank(ops, self.accounts, self.total)]


# -------------------------------------------------------------------------------------------------
class Session(Workload):
    """Each client writes its own key through the leader and reads with `consistency=session` from a
    node it picks at random each time; its session token travels with it."""

    name = "session"

    def step(self, p: int, client: Client, h: History, rng: random.Random, endpoints: list[str]) -> None:
        own = f"sess/p{p}"
        if rng.random() < 0.3:
            counter = self.unique()
            self.write(h, p, "write", own, counter, lambda: client.put(own, str(counter)), lambda rep: rep.meta.index)
            return
        key = own if rng.random() < 0.6 else f"sess/p{rng.randrange(self.workers)}"
        ep = rng.choice(endpoints)
        self.read(h, p, "read", key, {"node": ep}, lambda: client.get(key, consistency="session", endpoint=ep),
                  lambda rep: {"value": _int(rep.kv.value) if rep.found else None,
                               "rev": rep.kv.mod_revision if rep.found else 0})

    def check(self, ops: list[Op]) -> list[Verdict]:
        return [check_session(ops)]


# -------------------------------------------------------------------------------------------------
class Staleness(Workload):
    """Single writers bump counters; readers ask any node for `bounded_staleness` reads (some strict),
    and each answer must be at least as new as every write acknowledged longer than the bound before
    the read began."""

    name = "staleness"
    keys = ["st/0", "st/1"]
    bound_ms = 300

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.counters = {k: 0 for k in self.keys}

    def step(self, p: int, client: Client, h: History, rng: random.Random, endpoints: list[str]) -> None:
        if p < len(self.keys):  # the single writer of keys[p]
            key = self.keys[p]
            self.counters[key] += 1
            c = self.counters[key]
            self.write(h, p, "write", key, c, lambda: client.put(key, str(c)))
            return
        key = rng.choice(self.keys)
        ep = rng.choice(endpoints)
        strict = rng.random() < 0.3
        arg = {"max_staleness_ms": self.bound_ms, "strict": strict, "node": ep}
        self.read(h, p, "read", key, arg,
                  lambda: client.get(key, consistency="bounded_staleness", max_staleness_ms=self.bound_ms,
                                     strict=strict, endpoint=ep),
                  lambda rep: _int(rep.kv.value) if rep.found else None,
                  bound_ms=lambda rep: round(rep.meta.staleness_bound_ms, 1))

    def check(self, ops: list[Op]) -> list[Verdict]:
        return [check_staleness(ops)]


WORKLOADS: dict[str, type[Workload]] = {w.name: w for w in (Register, Append, AckLevels, Bank, Session, Staleness,
                                                             LeaseRegister, RetryingRegister)}

from .coordination import COORDINATION_WORKLOADS  # noqa: E402 - they build on Workload, defined above

WORKLOADS.update(COORDINATION_WORKLOADS)
