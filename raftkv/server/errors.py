"""Errors the host raises to services; the API maps each to one gRPC status."""

from __future__ import annotations


class HostError(Exception):
    """Base of host errors; `retryable` tells the client whether trying again is safe."""

    retryable = False


class NotLeader(HostError):
    """Writes and linearizable reads must go to the leader. Carries where it is, if known."""

    retryable = True

    def __init__(self, leader_id: int, leader_address: str) -> None:
        where = f"node {leader_id} at {leader_address}" if leader_id else "unknown (election in progress)"
        super().__init__(f"this node is not the leader; leader: {where}")
        self.leader_id = leader_id
        self.leader_address = leader_address


class ProposalLost(HostError):
    """The entry was overwritten by a new leader before it committed: it was NOT applied. Safe to retry."""

    retryable = True

    def __init__(self, index: int) -> None:
        super().__init__(f"write at index {index} was discarded by a leader change before it committed; retry")
        self.index = index


class LeadershipLost(HostError):
    """A read's leadership round was interrupted by a leader change. Safe to retry."""

    retryable = True


class ShuttingDown(HostError):
    """The node stopped before the request went into the log: nothing was applied. Safe to retry."""

    retryable = True


class RaftLoopHeldUp(HostError):
    """This node's Raft loop has not taken its ticks for 2 s or more (a Ready waits, typically on a slow or
    frozen disk), so what needs it would wait for as long: refused before anything was proposed.
    Safe to retry, on another node."""

    retryable = True


class OutcomeUnknown(HostError):
    """The node stopped after the write went into its log: it may still commit under another leader.
    Retrying could apply it twice, so the client must not retry it blindly."""


class SyncTimeout(HostError):
    """A `sync` write did not reach every member of the sync set by the deadline. It IS committed."""

    def __init__(self, index: int, term: int, confirmed_by: list[int]) -> None:
        super().__init__(
            f"sync write committed at index {index} but not confirmed by every sync member before the deadline; "
            f"confirmed by {confirmed_by}"
        )
        self.index = index
        self.term = term
        self.confirmed_by = confirmed_by


class NoSpace(HostError):
    """The NOSPACE alarm: this node cannot persist (its disk or LMDB map is full), so it takes no write
    until a retried persist succeeds. Nothing of the refused write reached the log: safe to retry."""

    retryable = True
