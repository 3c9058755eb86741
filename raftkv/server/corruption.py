"""Divergence checks and the CORRUPT alarm (seed §11.5: data corruption requires a human).

A check, on the leader: commit a `HashKV` entry (storage/ha_commands.py) so that every member hashes its
state machine at that one revision as it applies it; ask every member for its hash at that revision (the
api does the asking, `comparer`); the hash most members hold (the leader's on a tie) is the reference,
and each member whose hash differs gets a CORRUPT alarm, committed through the log (AlarmRaise) so every
member holds it and a new leader keeps it. While any CORRUPT alarm holds:

- every write is refused with FAILED_PRECONDITION, reason CORRUPT (`Corrupt`), the message naming the
  member, the revision and the two hashes: writing on would build on a state machine that is wrong
  somewhere;
- the member it names reports not ready (its copy is the wrong one; the others keep serving reads);
- it shows in `kv status` (an ALARM line), `kv alarm list`, `raftkv_alarm{type="corrupt"}` and the log.

Nothing is repaired: an operator replaces the member (docs/runbooks/corruption-alarm.md) and disarms the
alarm (`kv alarm disarm`, committed too). The check runs on request (`kv check hash`) and, with
`--corruption-check-interval`, every that many seconds on the leader. Hashing costs each member O(keys) on
its loop (storage/alarms.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from ..storage.alarms import Alarm, KvHash
from ..storage.ha_commands import AlarmDisarm, AlarmRaise, HaCommand, HashKV, encode
from .errors import HostError
from .proposals import Proposal

if TYPE_CHECKING:
    from .host import NodeHost

log = structlog.get_logger("raftkv.corruption")

CORRUPT = "CORRUPT"


class Corrupt(HostError):
    """A write refused while a CORRUPT alarm holds (FAILED_PRECONDITION, reason CORRUPT)."""


class HashUnavailable(Exception):
    """This member did not hash the revision asked for (it installed a snapshot past it, restarted, or has
    not applied it within the wait)."""


@dataclass(slots=True)
class MemberHash:
    member_id: int
    address: str
    digest: bytes = b""
    keys: int = 0
    error: str = ""
    matches: bool = False


@dataclass(slots=True)
class CheckReport:
    revision: int
    members: list[MemberHash] = field(default_factory=list)
    corrupt: bool = False


Comparer = Callable[[int, float], Awaitable[list[MemberHash]]]
"""(revision, timeout) -> every other member's hash at that revision (the api asks them over gRPC)."""


class CorruptionChecker:
    def __init__(self, host: NodeHost, interval_s: float = 0.0) -> None:
        self.host = host
        self.interval_s = interval_s
        self.comparer: Comparer | None = None
        self._task: asyncio.Task[None] | None = None
        self._shown = False
        host.metrics.alarm.labels("corrupt").set(0)

    # ------------------------------------------------------------------------------------------ state
    def alarms(self) -> list[Alarm]:
        return [a for a in self.host.store.alarms.all() if a.kind == CORRUPT]  # type: ignore[attr-defined]

    @property
    def raised(self) -> bool:
        return bool(self.alarms())

    def lines(self) -> list[str]:
        """One line per CORRUPT alarm, for `kv status` (StatusResponse.alarms)."""
        return [a.message for a in self.alarms()]

    def refusal(self) -> Corrupt:
        first = self.alarms()[0]
        return Corrupt(f"{first.message}; writes are refused until an operator replaces that member and "
                       "disarms the alarm (kv alarm disarm; see docs/runbooks/corruption-alarm.md)")

    def refuse_writes(self) -> None:
        if self.raised:
            raise self.refusal()

    def not_ready(self) -> str:
        """Why this member is not ready, if a CORRUPT alarm names it."""
        mine = [a for a in self.alarms() if a.member == self.host.cfg.id]
        return f"CORRUPT alarm: {mine[0].message}" if mine else ""

    def after_apply(self) -> None:
        """Metric and log follow the applied alarms (called from the checker's own loop)."""
        raised = self.raised
        self.host.metrics.alarm.labels("corrupt").set(1 if raised else 0)
        if raised and not self._shown:
            for a in self.alarms():
                log.error("CORRUPT alarm: a member's state machine differs; writes are refused until an operator "
                          "acts", member=a.member, revision=a.revision, detail=a.message)
        elif not raised and self._shown:
            log.info("CORRUPT alarm disarmed: writes are taken again")
        self._shown = raised

    # ------------------------------------------------------------------------------------------ the log
    async def _commit(self, cmd: HaCommand) -> Any:
        """Propose `cmd` past write admission (a check and a disarm must go through under the alarm) and
        wait for this node to apply it; its result (a KvHash for HashKV)."""
        h = self.host
        if not h.is_leader:
            raise h.not_leader()
        loop = asyncio.get_running_loop()
        placed: asyncio.Future[tuple[int, int]] = loop.create_future()
        applied: list[asyncio.Future[Any]] = [loop.create_future()]
        h.proposals.add(Proposal([encode(cmd)], placed, applied))
        h.run_in_loop(lambda: None)  # wake the loop: the proposal is placed in its next round
        await placed
        result = await applied[0]
        self.after_apply()
        return result

    async def hash_now(self) -> KvHash:
        """Leader: commit a HashKV entry; the leader's own hash at its revision."""
        result = await self._commit(HashKV())
        if not isinstance(result, KvHash):
            raise HashUnavailable(f"the hash entry was not applied as one ({result!r})")
        return result

    async def hash_at(self, revision: int, wait_s: float) -> KvHash:
        """This member's hash at `revision`, once it applied it (waiting at most `wait_s`)."""
        try:
            await asyncio.wait_for(self.host.wait_applied(revision), wait_s)
        except TimeoutError:
            raise HashUnavailable(f"node {self.host.cfg.id} has not applied revision {revision} "
                                  f"(applied {self.host.applied})") from None
        got = self.host.store.hashes.get(revision)  # type: ignore[attr-defined]
        if got is None:
            raise HashUnavailable(f"node {self.host.cfg.id} did not hash revision {revision} (it installed a "
                                  "snapshot past it or restarted since; run the check again)")
        return got  # type: ignore[no-any-return]

    async def disarm(self, member: int = 0) -> None:
        await self._commit(AlarmDisarm(CORRUPT, member))
        log.warning("CORRUPT alarm disarmed by an operator", member=member or "all")

    # ------------------------------------------------------------------------------------------ the check
    async def check(self, timeout_s: float) -> CheckReport:
        """Leader: hash every member at one fresh revision, raise CORRUPT for each that differs."""
        mine = await self.hash_now()
        h = self.host
        others: list[MemberHash] = await self.comparer(mine.revision, timeout_s) if self.comparer else []
        members = [MemberHash(h.cfg.id, h.cfg.address, mine.digest, mine.keys), *others]
        counts: dict[bytes, int] = {}
        for m in members:
            if m.digest:
                counts[m.digest] = counts.get(m.digest, 0) + 1
        reference = max(counts, key=lambda d: (counts[d], d == mine.digest))
        report = CheckReport(mine.revision, members)
        for m in members:
            m.matches = m.digest == reference
            if m.digest and not m.matches:
                report.corrupt = True
                msg = (f"CORRUPT: node {m.member_id}'s state machine differs at revision {mine.revision}: hash "
                       f"{m.digest.hex()[:16]} ({m.keys} keys), {counts[reference]} member(s) hold "
                       f"{reference.hex()[:16]}")
                log.error("divergence found", member=m.member_id, revision=mine.revision,
                          hash=m.digest.hex(), reference=reference.hex())
                await self._commit(AlarmRaise(CORRUPT, m.member_id, mine.revision, msg))
        if not report.corrupt:
            log.info("divergence check passed", revision=mine.revision, members=len(members),
                     unanswered=[m.member_id for m in members if not m.digest])
        return report

    # ------------------------------------------------------------------------------------------ background
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="raftkv-corruption-check")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        """Every `interval_s` on the leader a check; on every member the metric follows the alarms."""
        waited = 0.0
        step = 0.5
        while True:
            await asyncio.sleep(step)
            waited += step
            self.after_apply()
            if self.interval_s <= 0 or waited < self.interval_s or not self.host.is_leader:
                continue
            waited = 0.0
            try:
                await self.check(max(5.0, min(self.interval_s, 30.0)))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a check that could not run is tried again next time
                log.warning("divergence check could not run", error=f"{type(e).__name__}: {e}")
