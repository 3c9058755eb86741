"""The staleness stamps a host keeps and puts in its messages' envelopes (transport/envelope.py), for
bounded-staleness reads (DESIGN.md §5, "Staleness proof"). The core knows nothing of them: it numbers its
leadership rounds, says in each Ready which round's heartbeats leave with it (`Ready.round_sent`) and which
round a quorum confirmed (`RaftNode.confirmed_round()`); the host does the rest, on its own clock.

On a leader:
- each follower's newest stamp, from the envelopes of its APP_RESP / HEARTBEAT_RESP (`heard`);
- when a Ready sends rounds' heartbeats, the stamps heard so far and the commit index then (`round_sent`).
  Once a quorum confirms such a round, the leader was leader when it sent it, and its commit index then
  covered every write acknowledged before any of those stamps were taken (the ReadIndex argument, with
  the commit index trustworthy: only rounds sent after an entry of the term committed are confirmed as
  proof). That pair is what the leader echoes to the follower (`confirm`, `echo_for`).

On a follower: the newest echo its leader sent it (`note_echo`), from which it proves its own staleness
(staleness.py): once it has applied `echo_commit`, its state is at most `now - echo_stamp` old."""

from __future__ import annotations

from collections import deque

from ..core.rounds import ConfirmedRound

MAX_ROUNDS = 4096
"""Rounds sent and not yet confirmed whose stamps are kept (a leader cut off keeps opening rounds until
CheckQuorum deposes it); the oldest are forgotten first, which only delays an echo, never falsifies one."""


class StalenessStamps:
    def __init__(self) -> None:
        self._term = 0
        self._heard: dict[int, int] = {}
        self._sent: deque[tuple[int, int, dict[int, int], int]] = deque()  # (term, round, stamps, commit)
        self._confirmed = (0, 0)
        self._forgotten = (0, 0)
        self._fresh_for: dict[int, tuple[int, int]] = {}
        self.freshness: tuple[int, int] | None = None
        """Follower: the newest (echo_stamp, echo_commit) its leader vouched for."""

    # -- leader ----------------------------------------------------------------------------------------
    def _lead(self, term: int) -> None:
        """A new leadership (term): what was heard and vouched for under another is void."""
        if term != self._term:
            self._term = term
            self._heard.clear()
            self._sent.clear()
            self._fresh_for.clear()
            self._confirmed = self._forgotten = (term, 0)

    def heard(self, term: int, peer: int, stamp: int) -> None:
        """A response of `peer` to this leader of `term` carried `stamp`."""
        self._lead(term)
        if stamp > self._heard.get(peer, 0):
            self._heard[peer] = stamp

    def round_sent(self, round_sent: tuple[int, int] | None, commit: int) -> None:
        """The heartbeats of the rounds up to `round_sent` = (term, number) leave now, with the commit
        index `commit`. Every such Ready is recorded, so a round is never credited with stamps heard
        after it was sent."""
        if round_sent is None:
            return
        self._lead(round_sent[0])
        if self._sent and self._sent[-1][:2] >= round_sent:
            return
        self._sent.append((*round_sent, dict(self._heard), commit))
        while len(self._sent) > MAX_ROUNDS:
            term, number, _, _ = self._sent.popleft()
            self._forgotten = (term, number)

    def confirm(self, rnd: ConfirmedRound | None) -> None:
        """The core's newest quorum-confirmed round (with a trustworthy commit index): vouch for the stamps
        heard before it was sent."""
        if rnd is None or rnd.term != self._term:
            return
        key = (rnd.term, rnd.number)
        if key <= self._confirmed or key <= self._forgotten:
            return
        self._confirmed = key
        sent = self._sent
        while sent and sent[0][1] < rnd.number:
            sent.popleft()
        if not sent:
            return
        # Rounds numbered above the previous record and up to this one's left with this record's Ready.
        _, _, stamps, commit = sent[0]
        fresh = self._fresh_for
        for peer, stamp in stamps.items():
            prev = fresh.get(peer)
            if prev is None or stamp > prev[0]:
                fresh[peer] = (stamp, commit)

    def echo_for(self, peer: int) -> tuple[int, int] | None:
        return self._fresh_for.get(peer)

    def forget(self, peer: int) -> None:
        """A member removed or replaced: what it said and what was vouched for it no longer hold."""
        self._heard.pop(peer, None)
        self._fresh_for.pop(peer, None)

    # -- follower --------------------------------------------------------------------------------------
    def note_echo(self, echo: tuple[int, int] | None) -> None:
        if echo is not None and (self.freshness is None or echo[0] > self.freshness[0]):
            self.freshness = echo
