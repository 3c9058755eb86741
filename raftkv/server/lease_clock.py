"""A leader's lease and its own staleness proof, timed on the host's monotonic clock.

The core numbers its rounds of heartbeats and tells the host two things: in each Ready, the newest round
whose heartbeats leave with it (`Ready.round_sent`), and on demand the newest round a quorum confirmed
(`RaftNode.confirmed_round()`, with the commit index it covers). The core counts no time, and ticks are
no clock for this: they stop while a process is paused, and an overdue tick timer fires once, not once
per missed tick. So this module keeps, per round, the monotonic time at which the host handed its
heartbeats to the transport -- no later than any follower received them -- and measures from there:

- the lease holds while `sent <= now < sent + lease`, with `lease` an election timeout minus the drift
  margin and one tick more: a follower that answered the round refuses other candidates until its own
  election timer runs out, at the earliest `election_ticks - 1` tick intervals after it received the
  heartbeat (its first tick may come at once);
- the leader's state is at most `now - sent` old once it has applied the round's commit index: every write
  acknowledged before the round was sent has an index no greater than that (the ReadIndex argument).

A clock that reads earlier than a recorded send time (it went back) proves nothing: every recorded round is
forgotten and the leader proves nothing until it confirms a round sent after that.
"""

from __future__ import annotations

from collections import deque

from ..core.rounds import ConfirmedRound
from .staleness import StalenessProof, prove_staleness

MAX_ROUNDS = 4096
"""Send times kept for rounds not yet confirmed (a leader cut off keeps opening rounds until CheckQuorum
deposes it); the oldest are forgotten first, which can only make a proof unavailable, never wrong."""

NOTHING_PROVEN = StalenessProof(None, None, None)


def lease_seconds(tick_ms: int, election_ticks: int, drift_ticks: int) -> float:
    """How long after sending a confirmed round the lease holds (0 or less: never)."""
    return (election_ticks - 1 - drift_ticks) * tick_ms / 1000


class LeaseClock:
    def __init__(self, lease_s: float) -> None:
        self.lease_ns = int(lease_s * 1e9)
        # (term, newest round number of one Ready, send time), oldest first. Every round numbered above the
        # previous entry's (same term) and up to this one's left with this entry's Ready, at this time.
        self._sent: deque[tuple[int, int, int]] = deque()
        # Rounds up to this (term, number) have no known send time any more (forgotten, or timed on a clock
        # that has since gone back): they prove nothing.
        self._unknown_through = (0, 0)
        self._latest_ns = 0
        self.clock_steps_back = 0

    def note_sent(self, round_sent: tuple[int, int] | None, now_ns: int) -> None:
        """The heartbeats of the rounds up to `round_sent` = (term, number) are being handed to the
        transport now."""
        self._observe(now_ns)
        if round_sent is None:
            return
        if self._sent and self._sent[-1][:2] >= round_sent:
            return  # already noted; the first time is the earlier, so the safer one
        self._sent.append((*round_sent, now_ns))
        while len(self._sent) > MAX_ROUNDS:
            self._forget_oldest()

    def sent_at(self, rnd: ConfirmedRound) -> int | None:
        """When the heartbeats of `rnd` were handed to the transport (None: not known).

        Entries for older rounds are dropped: the confirmed round only moves forward (and a new leadership
        has a higher term), so they are not asked for again -- and if they were, they prove nothing."""
        key = (rnd.term, rnd.number)
        if key <= self._unknown_through:
            return None
        sent = self._sent
        while sent and sent[0][:2] < key:
            self._forget_oldest()
        if sent and sent[0][0] == rnd.term:
            return sent[0][2]
        return None

    def lease_valid(self, rnd: ConfirmedRound | None, applied: int, now_ns: int) -> bool:
        """Whether a leader whose core reports `rnd` (and holds the lease's other conditions) may answer
        a read from its applied state now. Its state must include the round's commit index: entries of
        earlier leaders that were acknowledged are below it."""
        if rnd is None or applied < rnd.commit or self.lease_ns <= 0:
            return False
        self._observe(now_ns)
        sent = self.sent_at(rnd)
        return sent is not None and sent <= now_ns < sent + self.lease_ns

    def proof(self, rnd: ConfirmedRound | None, applied: int, now_ns: int) -> StalenessProof:
        """The staleness bound a leader proves: the age of its newest confirmed round, once applied
        through that round's commit index."""
        if rnd is None:
            return NOTHING_PROVEN
        self._observe(now_ns)
        sent = self.sent_at(rnd)
        if sent is None:
            return NOTHING_PROVEN
        return prove_staleness((sent, rnd.commit), applied, now_ns)

    def _forget_oldest(self) -> None:
        term, number, _ = self._sent.popleft()
        self._unknown_through = max(self._unknown_through, (term, number))

    def _observe(self, now_ns: int) -> None:
        if now_ns < self._latest_ns:
            # The clock went back: no recorded send time can be compared with "now" any more.
            while self._sent:
                self._forget_oldest()
            self.clock_steps_back += 1
        self._latest_ns = now_ns
