"""Read consistency levels, and the rule that lets a node prove a staleness bound on its own clock.

- LINEARIZABLE (default): a ReadIndex round through the leader; the serving node waits until it has
  applied the read index. Sees every write acknowledged before the read began.
- LEASE: the leader answers locally while its lease holds: until an election timeout, minus a drift
  margin, after the moment (on the leader's own monotonic clock) it sent the newest round of heartbeats
  that a quorum confirmed. Linearizable if clocks drift less than the margin. Never measured in ticks:
  ticks stop while a process is paused, a clock does not.
- SERIALIZABLE (alias EVENTUAL): any node, its applied state as it is. Committed data only, maybe stale.
- BOUNDED_STALENESS: any node that can prove its state is no older than the bound (below); otherwise it
  waits briefly, forwards to the leader, or with `strict` fails FAILED_PRECONDITION.
- SESSION: any node whose applied index has reached the session token's index (waits, then forwards).

The staleness proof: the follower's host stamped a response with its own monotonic time `t`; the leader,
after confirming a leadership round sent later, echoed `t` with its commit index `c` of that round. Every
write acknowledged before local time `t` has index <= `c`. So once applied >= `c`, the state is at most
`now - t` old. Flight time only makes `t` earlier, which makes the bound larger, never wrong. A leader
proves its own bound the same way, with `t` the time it sent its newest quorum-confirmed round and `c`
the commit index of that round. A clock that reads earlier than the stamp (it went back) proves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..server.staleness import StalenessProof, prove_staleness

__all__ = ["ReadLevel", "StalenessBound", "StalenessProof", "prove_staleness", "satisfies"]


class ReadLevel(Enum):
    LINEARIZABLE = "linearizable"
    LEASE = "lease"
    SERIALIZABLE = "serializable"
    BOUNDED_STALENESS = "bounded_staleness"
    SESSION = "session"


@dataclass(slots=True, frozen=True)
class StalenessBound:
    max_staleness_ms: int | None = None
    max_lag_entries: int | None = None
    strict: bool = False

    def validate(self) -> None:
        if self.max_staleness_ms is None and self.max_lag_entries is None:
            raise ValueError("bounded_staleness needs max_staleness_ms and/or max_lag_entries")
        if (self.max_staleness_ms or 0) < 0 or (self.max_lag_entries or 0) < 0:
            raise ValueError("staleness bounds must not be negative")


def satisfies(proof: StalenessProof, bound: StalenessBound, max_confirmation_age_ms: float) -> bool:
    """Does the proof meet the bound? A lag-in-entries bound only counts when the confirmation it is
    measured against is itself recent (within `max_confirmation_age_ms`, e.g. an election timeout):
    otherwise a node cut off for an hour would be "0 entries behind" what it last heard."""
    if bound.max_staleness_ms is not None:
        if proof.staleness_ms is None or proof.staleness_ms > bound.max_staleness_ms:
            return False
    if bound.max_lag_entries is not None:
        if proof.lag_entries is None or proof.lag_entries > bound.max_lag_entries:
            return False
        if proof.confirmation_age_ms is None or proof.confirmation_age_ms > max_confirmation_age_ms:
            return False
    return True
