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
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum


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


def confirmed_members(index: int, match: Mapping[int, int]) -> list[int]:
    return sorted(nid for nid, m in match.items() if m >= index)


@dataclass(slots=True)
class _Waiter:
    index: int
    members: frozenset[int]
    need: int
    deadline: float
    level: AckLevel
    future: asyncio.Future[AckOutcome] = field(repr=False)


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


class DurabilityWaiters:
    """Writes already committed that wait for more members to hold them (SEMI_SYNC and SYNC)."""

    def __init__(self) -> None:
        self._waiting: list[_Waiter] = []

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, index: int, level: AckLevel, members: frozenset[int], need: int, deadline: float,
            match: Mapping[int, int], now: float) -> asyncio.Future[AckOutcome]:
        fut: asyncio.Future[AckOutcome] = asyncio.get_running_loop().create_future()
        w = _Waiter(index, members, need, deadline, level, fut)
        if not self._settle(w, match, now):
            self._waiting.append(w)
        return fut

    def update(self, match: Mapping[int, int], now: float) -> None:
        """Re-check every waiter against the newest progress and the clock."""
        if self._waiting:
            self._waiting = [w for w in self._waiting if not self._settle(w, match, now)]

    def next_deadline(self) -> float | None:
        return min((w.deadline for w in self._waiting), default=None)

    def fail_all(self, exc: BaseException) -> None:
        for w in self._waiting:
            if not w.future.done():
                w.future.set_exception(exc)
        self._waiting = []

    @staticmethod
    def _settle(w: _Waiter, match: Mapping[int, int], now: float) -> bool:
        if w.future.done():
            return True  # the client went away
        confirmed = confirmed_members(w.index, match)
        have = sum(1 for nid in confirmed if nid in w.members)
        if have >= w.need:
            w.future.set_result(AckOutcome(w.level, False, confirmed))
            return True
        if now >= w.deadline:
            if w.level == AckLevel.SEMI_SYNC:
                w.future.set_result(AckOutcome(AckLevel.MAJORITY, True, confirmed))
            else:
                w.future.set_result(AckOutcome(w.level, False, confirmed, timed_out=True))
            return True
        return False
