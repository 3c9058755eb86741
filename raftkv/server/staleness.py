"""The staleness proof a node can give of its own state (DESIGN.md §5, bounded staleness): from a stamp
on its own monotonic clock and the commit index that stamp was confirmed with. The host owns the stamps
(they travel beside Raft's messages, not inside the core's decisions); the read policy (layers/reads.py)
decides whether a proof meets a request's bound."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class StalenessProof:
    """What a node can guarantee about its state right now.

    `staleness_ms`: proven upper bound on the age of its state (None: nothing proven).
    `lag_entries`: how far its applied index is behind the commit index the leader last confirmed to it,
    and `confirmation_age_ms` how old that confirmation is (None: never confirmed).
    """

    staleness_ms: float | None
    lag_entries: int | None
    confirmation_age_ms: float | None


def prove_staleness(freshness: tuple[int, int] | None, applied: int, now_ns: int) -> StalenessProof:
    """The bound this node can prove from (stamp_ns, commit): a follower's echoed stamp and commit index,
    or a leader's send time and commit index of its newest confirmed round, with `now_ns` on the same
    monotonic clock as the stamp. "Now" before the stamp means the clock went back: no age is proven."""
    if freshness is None:
        return StalenessProof(None, None, None)
    stamp_ns, commit = freshness
    lag = max(0, commit - applied)
    if now_ns < stamp_ns:
        return StalenessProof(None, lag, None)
    age_ms = (now_ns - stamp_ns) / 1e6
    return StalenessProof(age_ms if applied >= commit else None, lag, age_ms)


