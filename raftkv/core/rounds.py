"""Leadership rounds: the one mechanism behind ReadIndex, lease reads and staleness proofs.

Every heartbeat broadcast opens a round, numbered upwards and carried in the heartbeat's context. A follower
that answers a heartbeat of round r acknowledges us as leader at the moment that heartbeat left. Once a
quorum of voters has acknowledged round r (or a later one), we know that when round r was sent:
- no other leader could have committed anything we do not have, so our commit index then covered every
  acknowledged write: reads waiting on round r may be served at the commit index recorded for them
  (ReadIndex, Raft thesis §6.4);
- followers that answered will not vote for anyone else until an election timeout after they received it,
  so leadership is safe until (time the round was sent) + election timeout, minus a drift margin (lease).
  The core counts no time: it reports which round a quorum confirmed (`Rounds.proof`) and, in each Ready,
  the newest round whose heartbeats leave with it; the host notes when it sends them on its monotonic
  clock and times the lease from there. Ticks are no clock for this: they stop while a process is paused;
- a follower's stamp (its host's time, in the envelope of its answer) received before the round was sent
  is covered by the leader's commit index then: the leader's host echoes (stamp, commit) so the follower
  bounds its own staleness with only its own clock (server/stamps.py).
Many concurrent reads join the round whose heartbeat has not yet left, so they share one quorum round.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .quorum import quorum_index


@dataclass(slots=True)
class PendingRead:
    index: int
    context: bytes
    requester: int  # node id that asked (the leader itself, or a follower that forwarded the read)


@dataclass(slots=True, frozen=True)
class ConfirmedRound:
    """A round of leader `term` that a quorum confirmed, sent when the leader's commit index was `commit`
    and trustworthy. Every write acknowledged before the round was sent has an index <= `commit`."""

    term: int
    number: int
    commit: int


@dataclass(slots=True)
class Round:
    number: int
    commit: int
    commit_valid: bool  # our commit index is trustworthy (an entry of our term is committed)
    reads: list[PendingRead] = field(default_factory=list)


class Rounds:
    def __init__(self) -> None:
        self.last = 0  # number of the newest round opened
        self.sent = 0  # newest round whose heartbeats have been handed to the host
        self.confirmed = 0  # newest round acknowledged by a quorum
        # (number, commit) of the newest confirmed round whose commit index was trustworthy when sent
        self.proof: tuple[int, int] | None = None
        self._open: deque[Round] = deque()
        self._acked: dict[int, int] = {}

    def open(self, commit: int, commit_valid: bool) -> Round:
        self.last += 1
        r = Round(self.last, commit, commit_valid)
        self._open.append(r)
        return r

    def unsent(self) -> Round | None:
        """The newest round if its heartbeats are not yet out, so a new read may still join it."""
        if self._open and self._open[-1].number > self.sent:
            return self._open[-1]
        return None

    def mark_sent(self) -> int:
        """The heartbeats of every round opened so far are being handed to the host: returns the newest
        such round's number if it was not reported before (0 otherwise)."""
        newest = self.last if self.last > self.sent else 0
        self.sent = self.last
        return newest

    def ack(self, node: int, number: int, self_id: int, voters: frozenset[int]) -> list[Round]:
        """Record that `node` acknowledged round `number`; return the rounds this confirms, oldest first."""
        if number > self._acked.get(node, 0):
            self._acked[node] = number
        self._acked[self_id] = self.last
        q = quorum_index(voters, self._acked)
        return self._confirm_up_to(q)

    def confirm_alone(self) -> list[Round]:
        """A single-voter cluster confirms every round by itself."""
        return self._confirm_up_to(self.last)

    def _confirm_up_to(self, q: int) -> list[Round]:
        done: list[Round] = []
        while self._open and self._open[0].number <= q:
            done.append(self._open.popleft())
        if done:
            self.confirmed = done[-1].number
            valid = [r for r in done if r.commit_valid]
            if valid:
                self.proof = (valid[-1].number, valid[-1].commit)
        return done
