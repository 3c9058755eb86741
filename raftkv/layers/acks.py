"""Write acknowledgement levels, and the bookkeeping of writes waiting for durable confirmations.

- LEADER (async): answered once the leader has fsynced the entry, before it is committed. Can be lost if
  the leader fails before a majority holds it; the reply says so.
- MAJORITY (default): answered once committed (durable on a majority of voters) and applied on the leader.
- SEMI_SYNC: as MAJORITY, then waits until `min_replicas` members of the semi-sync set hold it durably, at
  most `timeout_ms`; on timeout it is answered anyway, marked degraded (MySQL's semi-sync fallback).
- SYNC: as MAJORITY, then waits until every member of the sync set holds it durably. Never degrades: at
  the deadline the client gets DEADLINE_EXCEEDED naming the index and who had confirmed. The write stays
  committed either way: nothing is rolled back.

A follower's match index (from the core's progress table) is exactly "durably holds": followers acknowledge
appends only after their fsync.

The policy (`AckPolicy`) sits above the host and uses its primitives: `propose`, `wait_persisted`, the
apply results `propose` hands back, and `wait_durable`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import structlog

from ..server.errors import SyncTimeout
from ..server.host import NodeHost
from ..server.waiters import Durability, IndexWaiters, confirmed_members
from .admission import Admission

log = structlog.get_logger("raftkv.host")

__all__ = ["AckLevel", "AckOutcome", "AckPolicy", "AckRequest", "DurabilityWaiters", "SemiSyncStatus",
           "UnmeetableAck", "WriteOutcome", "check_meetable", "confirmed_members"]


class AckLevel(Enum):
    LEADER = "leader"
    MAJORITY = "majority"
    SEMI_SYNC = "semi_sync"
    SYNC = "sync"


@dataclass(slots=True, frozen=True)
class AckRequest:
    level: AckLevel = AckLevel.MAJORITY
    min_replicas: int = 1
    timeout_ms: int = 1000


@dataclass(slots=True)
class AckOutcome:
    """What a write actually achieved, as reported to the client."""

    level: AckLevel
    degraded: bool
    confirmed_by: list[int]
    timed_out: bool = False


class UnmeetableAck(ValueError):
    """An ack level this cluster can never give as asked (INVALID_ARGUMENT): answering it anyway would
    claim a level the write did not get."""


def check_meetable(ack: AckRequest, semi_sync_members: frozenset[int]) -> None:
    """Refuse, before proposing, a semi-sync write that asks for more confirmations than the semi-sync set
    has members. (A `sync` write's set always holds the leader, so it is never empty.)"""
    if ack.level == AckLevel.SEMI_SYNC and ack.min_replicas > len(semi_sync_members):
        ids = ",".join(map(str, sorted(semi_sync_members))) or "none"
        raise UnmeetableAck(f"semi_sync min_replicas={ack.min_replicas} can never be met: the semi-sync set has "
                            f"{len(semi_sync_members)} member(s) ({ids}); ask for fewer, or mark more members "
                            "with `kv members update ID --semi-sync`")


class SemiSyncStatus:
    """Whether semi-sync writes are currently degraded to majority (MySQL's Rpl_semi_sync_master_status).

    As in MySQL, a write that times out switches semi-sync off: while degraded, semi-sync writes are answered
    as soon as they are committed instead of each waiting out its timeout for a replica that is down. Once
    enough semi-sync members have caught up with the write that degraded, writes wait for them again.
    Only changes of state are reported, so each transition is logged and counted once."""

    def __init__(self) -> None:
        self.degraded = False
        self.recover_at = 0
        self.recover_need = 1

    def observe(self, degraded: bool, index: int, need: int) -> bool:
        """Record one semi-sync write's outcome; True when it changed the state."""
        if degraded:
            self.recover_at = max(self.recover_at, index)
            self.recover_need = need
        if degraded == self.degraded:
            return False
        self.degraded = degraded
        return True

    def caught_up(self, match: Mapping[int, int], members: frozenset[int]) -> bool:
        """While degraded: have `recover_need` semi-sync members durably reached the write that degraded?
        Then semi-sync is on again (returns True once, for the transition)."""
        if not self.degraded:
            return False
        have = sum(1 for nid in members if match.get(nid, 0) >= self.recover_at)
        if have < min(self.recover_need, len(members)):
            return False
        self.degraded = False
        return True


def outcome_of(level: AckLevel, found: Durability) -> AckOutcome:
    """What a durability wait means at `level`: met, or at the deadline degraded (SEMI_SYNC, answered as
    MAJORITY) or timed out (SYNC)."""
    if not found.timed_out:
        return AckOutcome(level, False, found.confirmed_by)
    if level == AckLevel.SEMI_SYNC:
        return AckOutcome(AckLevel.MAJORITY, True, found.confirmed_by)
    return AckOutcome(level, False, found.confirmed_by, timed_out=True)


class DurabilityWaiters:
    """Writes already committed that wait for more members to hold them (SEMI_SYNC and SYNC), answered as
    their level says: the host's durability waits (server/waiters.py) seen through `outcome_of`."""

    def __init__(self) -> None:
        self._waiters = IndexWaiters()

    def __len__(self) -> int:
        return self._waiters.durable_waiting

    def add(self, index: int, level: AckLevel, members: frozenset[int], need: int, deadline: float,
            match: Mapping[int, int], now: float) -> asyncio.Future[AckOutcome]:
        return self._waiters.wait_durable(index, members, need, deadline, match, now,
                                          lambda found: outcome_of(level, found))

    def update(self, match: Mapping[int, int], now: float) -> None:
        self._waiters.release_durable(match, now)

    def next_deadline(self) -> float | None:
        return self._waiters.next_deadline()

    def fail_all(self, exc: BaseException) -> None:
        self._waiters.fail_durable(exc)


@dataclass(slots=True)
class WriteOutcome:
    index: int
    term: int
    result: Any
    ack: AckOutcome
    latency_s: float


class AckPolicy:
    """The write-ack levels of one node, over its host; holds the semi-sync degrade state, which the host
    loop lets it re-check after every round (`every_round`)."""

    def __init__(self, host: NodeHost) -> None:
        self.host = host
        self.semi_sync = SemiSyncStatus()
        self.admission = Admission.of(host)
        host.every_round(self._check_semi_sync_recovery)

    async def write(self, data: bytes, ack: AckRequest, needs_result: bool = True) -> WriteOutcome:
        """Propose `data` and wait as `ack` asks. Raises NotLeader, ProposalLost, SyncTimeout, NoSpace,
        Overloaded (admission control: refused before proposing, counted in flight until answered)."""
        self.host.admit_write(data)
        with self.admission.writes(1, len(data)):
            return await self._write(data, ack, needs_result)

    async def _write(self, data: bytes, ack: AckRequest, needs_result: bool) -> WriteOutcome:
        host = self.host
        if ack.level == AckLevel.SEMI_SYNC:
            check_meetable(ack, host.semi_sync_members())
        started = time.monotonic()
        level = ack.level
        persist_only = level == AckLevel.LEADER and not needs_result
        index, term, applied = await host.propose([data], results=not persist_only)
        if applied is None:
            await host.wait_persisted(index, term)
            return WriteOutcome(index, term, None, AckOutcome(AckLevel.LEADER, False, [host.cfg.id]),
                                time.monotonic() - started)
        result = await applied[0]
        if level in (AckLevel.LEADER, AckLevel.MAJORITY):
            # A leader-level write whose result is needed (a transaction) is answered after commit.
            outcome = AckOutcome(AckLevel.MAJORITY, False, confirmed_members(index, host.match_indexes()))
            return WriteOutcome(index, term, result, outcome, time.monotonic() - started)
        outcome = await self._await_durable(index, ack)
        if outcome.timed_out:
            raise SyncTimeout(index, term, outcome.confirmed_by)
        if level == AckLevel.SEMI_SYNC:
            self._note_semi_sync(index, ack, outcome)
        return WriteOutcome(index, term, result, outcome, time.monotonic() - started)

    async def write_many(self, datas: list[bytes]) -> list[WriteOutcome | BaseException]:
        """Majority writes proposed together, in order, answered each on its own once applied.

        The same as `write(data, AckRequest(MAJORITY))` for each, without a task and a placement future per
        write: the KV.Batch path sends hundreds of writes per call, and per-write asyncio objects were a
        visible share of the leader's CPU. Raises NotLeader (for all of them) when not the leader."""
        host = self.host
        if host.nospace:
            return await self._write_many_alarmed(datas)
        host.admit_write()
        with self.admission.writes(len(datas), sum(map(len, datas))):
            return await self._write_many(datas)

    async def _write_many(self, datas: list[bytes]) -> list[WriteOutcome | BaseException]:
        host = self.host
        started = time.monotonic()
        first, term, applied = await host.propose(datas)
        assert applied is not None
        # Entries are answered in index order, so when the last is answered all are: waiting on it alone
        # saves the loop iterations a gather over hundreds of futures takes to report.
        try:
            await applied[-1]
        except Exception:  # noqa: BLE001 - each entry's outcome is read below
            pass
        if not all(f.done() for f in applied):
            await asyncio.wait(applied)
        results = [f.exception() or f.result() for f in applied]
        match = host.match_indexes()
        latency = time.monotonic() - started
        return [r if isinstance(r, BaseException) else
                WriteOutcome(first + i, term, r, AckOutcome(AckLevel.MAJORITY, False,
                                                            confirmed_members(first + i, match)), latency)
                for i, r in enumerate(results)]

    async def _write_many_alarmed(self, datas: list[bytes]) -> list[WriteOutcome | BaseException]:
        """`write_many` under the NOSPACE alarm: each delete on its own, everything else refused."""
        async def one(data: bytes) -> WriteOutcome | BaseException:
            try:
                return await self.write(data, AckRequest(AckLevel.MAJORITY))
            except Exception as e:  # noqa: BLE001 - reported per write, as write_many does
                return e
        if not self.host.is_leader:
            raise self.host.not_leader()
        return list(await asyncio.gather(*(one(d) for d in datas)))

    def _await_durable(self, index: int, ack: AckRequest) -> asyncio.Future[AckOutcome]:
        host = self.host
        if ack.level == AckLevel.SYNC:
            members = host.sync_members()
            need = len(members)
            timeout = ack.timeout_ms / 1000
        else:
            members = host.semi_sync_members()
            need = ack.min_replicas
            # Degraded, or the set shrank below `need` since the write was checked: answer as soon as
            # committed (confirmed already, or not, and then said degraded), do not wait out the timeout.
            hopeless = self.semi_sync.degraded or need > len(members)
            timeout = 0.0 if hopeless else ack.timeout_ms / 1000
        level = ack.level
        return host.wait_durable(index, members, need, timeout, lambda found: outcome_of(level, found))

    def _note_semi_sync(self, index: int, ack: AckRequest, outcome: AckOutcome) -> None:
        if not self.semi_sync.observe(outcome.degraded, index, ack.min_replicas):
            return
        self.host.metrics.semi_sync_transition(outcome.degraded)
        if outcome.degraded:
            log.warning("semi-sync degraded", index=index, timeout_ms=ack.timeout_ms, min_replicas=ack.min_replicas,
                        confirmed_by=outcome.confirmed_by,
                        detail="writes are acknowledged after commit without the semi-sync replicas, "
                               "until they catch up")
        else:
            log.info("semi-sync recovered", index=index, confirmed_by=outcome.confirmed_by)

    def _check_semi_sync_recovery(self) -> None:
        """After each round on the leader: have the semi-sync members caught up with the write that
        degraded semi-sync?"""
        if not self.semi_sync.degraded:
            return
        match = self.host.match_indexes()
        if self.semi_sync.caught_up(match, self.host.semi_sync_members()):
            self.host.metrics.semi_sync_transition(False)
            log.info("semi-sync recovered", caught_up_to=self.semi_sync.recover_at,
                     confirmed_by=confirmed_members(self.semi_sync.recover_at, match))
