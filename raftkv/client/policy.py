"""What the sync and asyncio clients share: which endpoint to try next, and what is safe to retry.

Retrying is safe when the server says the request was not applied: NOT_LEADER (refused before proposing),
a proposal discarded by a leader change, a node shutting down, or a read interrupted by a leader change.
A failed connection is retried for reads. A put or delete is retried only when the connection was never
made, so the request never left this process: a connection that broke after the request was sent (the
node died or was cut off mid-call) may have delivered it, and a put applied once by a new leader and
again by the retry, after another client's write, would undo that write: a linearizability violation
the partition suite caught. Such an error reaches the caller, whose write's outcome is unknown. A
transaction is never retried after a connection failure."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import grpc

from .errors import DeadlineError, NotLeaderError, RaftKVError, UnavailableError, from_rpc_error

SAFE_REASONS = {"NOT_LEADER", "PROPOSALLOST", "LEADERSHIPLOST", "SHUTTINGDOWN"}
# How gRPC words a call that failed before any connection carried it (no server can have seen it).
NEVER_SENT = ("failed to connect to all addresses", "no address", "dns resolution failed")


@dataclass
class Endpoints:
    addresses: list[str]
    current: int = 0
    leader: str | None = None
    known: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not self.addresses:
            raise ValueError("at least one endpoint is needed")
        self.known = set(self.addresses)

    def pick(self, prefer_leader: bool) -> str:
        if prefer_leader and self.leader:
            return self.leader
        return self.addresses[self.current % len(self.addresses)]

    def failed(self, address: str) -> None:
        if self.leader == address:
            self.leader = None
        if self.addresses[self.current % len(self.addresses)] == address:
            self.current += 1

    def note_leader(self, address: str, err: RaftKVError) -> None:
        """Learn from a NOT_LEADER answer where to go next.

        A node that names the leader sends us there. A node that knows no leader (an election is under
        way, or it was removed from the cluster and will never hear of a leader again) is no place to
        wait: move on to the next endpoint, so the client finds whichever node does know."""
        if not isinstance(err, NotLeaderError):
            return
        if err.leader_address and err.leader_address != address:
            self.leader = err.leader_address
            if err.leader_address not in self.known:
                self.known.add(err.leader_address)
                self.addresses.append(err.leader_address)
        else:
            self.failed(address)


def retryable(err: RaftKVError, kind: str) -> bool:
    """kind: 'read', 'write' (idempotent put/delete) or 'txn'."""
    if err.reason in SAFE_REASONS:
        return True
    if err.code == grpc.StatusCode.UNAVAILABLE and not err.reason:  # the connection failed
        if kind == "read":
            return True
        return kind == "write" and never_sent(err)
    return False


READ_ATTEMPT_MIN_S = 1.0


def attempt_timeout(kind: str, remaining: float, total: float, endpoints: int, pinned: bool) -> float:
    """How long one attempt may take. A read that may go elsewhere gets a share of the deadline, so one
    hung node (paused, or overloaded, its port still open) cannot swallow the whole deadline: the read moves
    on to the next endpoint. Writes keep the whole deadline: a write cut short has an unknown outcome."""
    if kind != "read" or pinned or endpoints < 2:
        return remaining
    return min(remaining, max(READ_ATTEMPT_MIN_S, total / 3))


def never_sent(err: RaftKVError) -> bool:
    """Did the call fail before a connection carried it?"""
    text = str(err).lower()
    return any(marker in text for marker in NEVER_SENT)


def backoff(attempt: int) -> float:
    return min(0.5, 0.02 * (2 ** attempt)) * (0.5 + random.random())


class Attempts:
    """One call's tries: where to send the next one, how long it may take, and, after a failure, whether
    to try again (and after what pause) or to give up with the typed error. Shared by the sync and the
    asyncio client, which differ only in how they wait."""

    def __init__(self, endpoints: Endpoints, kind: str, admin: bool, timeout: float, endpoint: str | None) -> None:
        self.endpoints = endpoints
        self.kind = kind
        self.prefer_leader = kind != "read" or admin
        self.timeout = timeout
        self.endpoint = endpoint
        self.deadline = time.monotonic() + timeout
        self.count = 0
        self.last: RaftKVError | None = None
        self.budget = timeout
        self.cut_short = False

    def next(self) -> tuple[str, float]:
        """(address, seconds this try may take) for the next try; DeadlineError once the time is up."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            if isinstance(self.last, DeadlineError):
                raise self.last
            raise DeadlineError(f"no answer within {self.timeout:.1f}s" + (f" (last error: {self.last})"
                                                                           if self.last else ""),
                                grpc.StatusCode.DEADLINE_EXCEEDED)
        self.budget = attempt_timeout(self.kind, remaining, self.timeout, len(self.endpoints.addresses),
                                      self.endpoint is not None)
        self.cut_short = self.budget < remaining
        return self.endpoint or self.endpoints.pick(self.prefer_leader), self.budget

    def failed(self, address: str, e: grpc.RpcError | RaftKVError | TimeoutError) -> float:
        """Learn from a failed try (a failed call, an operation's own error from a batch, or our own
        timeout); returns the pause before the next one, or raises the error to give up."""
        if isinstance(e, grpc.RpcError):
            err = from_rpc_error(e)
        elif isinstance(e, RaftKVError):
            err = e
        else:
            err = DeadlineError(str(e) or "deadline exceeded", grpc.StatusCode.DEADLINE_EXCEEDED)
        self.endpoints.note_leader(address, err)
        if err.code == grpc.StatusCode.UNAVAILABLE and not err.reason:
            self.endpoints.failed(address)
            err = UnavailableError(f"{address}: {err}", err.code)
        elif err.code == grpc.StatusCode.DEADLINE_EXCEEDED and not err.reason and self.cut_short:
            self.endpoints.failed(address)  # our share ran out there: try the next endpoint at once
            self.last = UnavailableError(f"{address}: no answer within {self.budget:.1f}s", err.code)
            return 0.0
        if self.endpoint is not None or not retryable(err, self.kind):
            raise err from None
        self.last = err
        pause = min(backoff(self.count), max(0.0, self.deadline - time.monotonic()))
        self.count += 1
        return pause
