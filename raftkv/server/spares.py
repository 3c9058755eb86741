"""Hot spares (N+M redundancy, seed §11.1; what Consul's autopilot does for dead servers).

A spare is a learner whose member record is marked `spare` (`kv members add ID ADDR --learner --spare`):
it receives the log like any learner, so it is ready to vote the moment it is promoted. When a voter has
been silent (the leader heard nothing from it, lag.py) for longer than `--spare-promote-after`, the leader
replaces it, one committed membership change at a time:

1. promote a caught-up spare to voter (its record now says `replaces = the dead voter`, and is no longer
   a spare), then, once that is applied,
2. demote the dead voter to a learner (DEMOTE_VOTER), which clears `replaces`.

Promoting first briefly raises the voter count, and with it the quorum: 3 voters with one dead (2 healthy,
quorum 2) become 4 voters with quorum 3, which the 2 healthy voters and the spare just meet. So a
promotion is made only if the healthy voters plus the spare form a quorum of the enlarged configuration;
otherwise nothing is done and the reason is logged. A spare counts as caught up only when the leader heard
from it within the election timeout and its log is at most `SPARE_MAX_BEHIND` entries behind the leader's;
one that is not is never promoted. The `replaces` mark travels in the log, so a leader elected between
the two steps finishes the demotion. The strict reconfiguration check (reconfig_check.py) still vets both
changes. Each decision is one log line; promotions count in `raftkv_spare_promotions_total`.

The decision (`plan`) is a pure function of what the leader knows; `SparePromoter` runs it about once a
second on the leader and carries out what it says.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import structlog

from ..core import ConfChange, ConfChangeRejected, ConfChangeType
from .members import MemberInfo
from .reconfig_check import ClusterView

if TYPE_CHECKING:
    from .host import NodeHost

log = structlog.get_logger("raftkv.spares")

SPARE_MAX_BEHIND = 100
"""A spare at most this many entries behind the leader's last index (and heard from within the election
timeout) is caught up enough to be promoted."""


@dataclass(slots=True, frozen=True)
class Promote:
    spare: int
    dead: int


@dataclass(slots=True, frozen=True)
class Demote:
    dead: int
    by: int
    """The spare promoted in its place."""


@dataclass(slots=True, frozen=True)
class Hold:
    """A voter is dead but nothing can be done safely now; `why` says what is missing."""
    dead: int
    why: str
    kind: str = ""
    """What is missing, as a stable word ("spare", "quorum"): logged once per voter and kind, not once
    per look (the numbers in `why` move as the spare copies the log)."""


Step = Promote | Demote | Hold


def _quorum(n: int) -> int:
    return n // 2 + 1


def plan(view: ClusterView, members: dict[int, MemberInfo], silent_s: dict[int, float], after_s: float) -> Step | None:
    """The next step towards full fault tolerance, or None when no voter is dead (or the feature is off).

    `members` is the member registry; `silent_s` says, per member other than the leader, for how long
    the leader has heard nothing from it."""
    conf = view.conf
    for nid in sorted(conf.voters):
        replaced = members.get(nid, MemberInfo()).replaces
        if replaced and replaced in conf.voters and replaced != view.leader:
            return Demote(replaced, nid)  # a promotion done, its demotion still to do
    if after_s <= 0:
        return None
    # A dead witness is not replaced by a spare (a spare holds data; demoting a witness makes no sense).
    dead = sorted(n for n in conf.data_voters() if n != view.leader and silent_s.get(n, 0.0) > after_s)
    if not dead:
        return None
    victim = dead[0]
    spares = sorted(n for n in conf.learners if members.get(n, MemberInfo()).spare)
    if not spares:
        return None  # no spares configured: nothing to decide, and nothing worth a log line
    ready = [n for n in spares if view.heard_recently(n) and (view.behind(n) or 0) <= SPARE_MAX_BEHIND]
    if not ready:
        states = "; ".join(f"node {n} {view.behind(n)} entries behind, "
                           f"{'heard from recently' if view.heard_recently(n) else 'not heard from'}" for n in spares)
        return Hold(victim, f"no spare is caught up (at most {SPARE_MAX_BEHIND} entries behind and heard from "
                            f"within the election timeout): {states}", "spare")
    healthy = sorted(n for n in conf.voters if view.healthy(n))
    need = _quorum(len(conf.voters) + 1)
    if len(healthy) + 1 < need:
        return Hold(victim, f"promoting a spare would make {len(conf.voters) + 1} voters, needing {need} for a "
                            f"quorum, but only {len(healthy)} voters are healthy ({', '.join(map(str, healthy))}) "
                            f"plus the spare", "quorum")
    return Promote(ready[0], victim)


class SparePromoter:
    """Runs `plan` on the leader about once a second and carries out its steps through the host's
    membership changes (change_member: checked, proposed, awaited until applied)."""

    def __init__(self, host: NodeHost, after_s: float) -> None:
        self.host = host
        self.after_s = after_s
        self.promotions = host.metrics.spare_promotions
        self._task: asyncio.Task[None] | None = None
        self._last_hold = ""
        self._last_deferred = ""

    def start(self) -> None:
        if self.after_s > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name="raftkv-spares")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        period = min(1.0, max(0.1, self.after_s / 4))
        while True:
            await asyncio.sleep(period)
            if not self.host.is_leader:
                self._last_hold = ""
                continue
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a lost leadership, a change in progress: try again next period
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                if reason != self._last_deferred:  # once per reason, not once a period
                    self._last_deferred = reason
                    log.info("spare replacement deferred", reason=reason)
            else:
                self._last_deferred = ""

    async def step(self) -> Step | None:
        h = self.host
        now = h.clock.monotonic()
        view = h.reconfig_view()
        silent = {n: h.lag.silent_for(n, now) for n in view.conf.members() if n != view.leader}
        members = h.members.all()
        st = plan(view, members, silent, self.after_s)
        if isinstance(st, Hold):
            line = f"{st.dead}:{st.kind}"
            if line != self._last_hold:
                self._last_hold = line
                log.warning("voter unreachable, no spare promoted", voter=st.dead,
                            silent_seconds=round(silent.get(st.dead, 0.0), 1), reason=st.why)
        elif isinstance(st, Promote):
            self._last_hold = ""
            info = replace(members.get(st.spare, MemberInfo()), spare=False, replaces=st.dead)
            log.warning("promoting spare in place of unreachable voter", spare=st.spare, voter=st.dead,
                        silent_seconds=round(silent.get(st.dead, 0.0), 1))
            await h.change_member(ConfChange(ConfChangeType.PROMOTE_LEARNER, st.spare, info.encode()))
            self.promotions.inc()
            log.warning("spare promoted; demoting the unreachable voter next", spare=st.spare, voter=st.dead)
            await self._demote(Demote(st.dead, st.spare))
        elif isinstance(st, Demote):
            await self._demote(st)
        return st

    async def _demote(self, st: Demote) -> None:
        try:
            await self.host.change_member(ConfChange(ConfChangeType.DEMOTE_VOTER, st.dead))
        except ConfChangeRejected as e:
            log.warning("demotion of the replaced voter deferred", voter=st.dead, spare=st.by, reason=str(e))
            return
        log.warning("replaced voter demoted to learner", voter=st.dead, spare=st.by)
