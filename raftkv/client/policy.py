"""What the sync and asyncio clients share: which endpoint to try next, and what is safe to retry.

Retrying is safe when the server says the request was not applied: NOT_LEADER (refused before proposing),
a proposal discarded by a leader change, a node shutting down, or a read interrupted by a leader change.
A failed connection is retried for reads. A put or delete is retried only when the connection was never
made, so the request never left this process: a connection that broke after the request was sent (the
node died or was cut off mid-call) may have delivered it, and a put applied once by a new leader and
again by the retry, after another client's write, would undo that write: a linearizability violation
the partition suite caught. Such an error reaches the caller as `OutcomeUnknownError`. A transaction is
never retried after a connection failure.

Each try first waits, at most `connect_timeout`, for its channel to be READY (gRPC declares a channel
ready only once the server has answered the HTTP/2 handshake). A channel that is not ready carried
nothing, so a write may move on to the next endpoint: this is how a paused node (its port still accepts
TCP connections) is passed over instead of swallowing every write's whole deadline."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import grpc

from .errors import (
    CircuitOpenError,
    DeadlineError,
    NotLeaderError,
    OutcomeUnknownDeadlineError,
    OutcomeUnknownError,
    OutcomeUnknownUnavailableError,
    RaftKVError,
    TlsHandshakeError,
    UnavailableError,
    from_rpc_error,
)
from .resilience import Resilience, full_jitter, pushback_seconds

SAFE_REASONS = {"NOT_LEADER", "PROPOSALLOST", "LEADERSHIPLOST", "SHUTTINGDOWN", "MEMBER_REMOVED", "OVERLOADED",
                "RAFT_LOOP_HELD_UP"}
"""Refused before anything was applied: any request may be retried (OVERLOADED after its pushback)."""
GO_ELSEWHERE = {"MEMBER_REMOVED", "RAFT_LOOP_HELD_UP"}
"""Refused by this node for a reason of its own (removed; its Raft loop held up by its disk): another
member may serve the request, so the next try goes there."""
WRITES = frozenset({"write", "txn"})
# How gRPC words a call that failed before any connection carried it (no server can have seen it).
NEVER_SENT = ("failed to connect to all addresses", "no address", "dns resolution failed")


@dataclass
class Endpoints:
    addresses: list[str]
    current: int = 0
    leader: str | None = None
    known: set[str] = field(default_factory=set)
    ids: dict[str, int] = field(default_factory=dict)
    """Node ids learned from NOT_LEADER answers, to name nodes in messages."""

    def __post_init__(self) -> None:
        if not self.addresses:
            raise ValueError("at least one endpoint is needed")
        self.known = set(self.addresses)

    def pick(self, prefer_leader: bool) -> str:
        if prefer_leader and self.leader:
            return self.leader
        return self.addresses[self.current % len(self.addresses)]

    def name(self, address: str) -> str:
        """How messages name a node: `node 2 10.0.0.2:7001`, or `node 10.0.0.2:7001` if its id is unknown."""
        nid = self.ids.get(address)
        return f"node {nid} {address}" if nid else f"node {address}"

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
        leader_id = err.metadata.get("leader_id", "")
        if err.leader_address and leader_id.isdigit() and int(leader_id):
            self.ids[err.leader_address] = int(leader_id)
        if err.leader_address and err.leader_address != address:
            self.leader = err.leader_address
            if err.leader_address not in self.known:
                self.known.add(err.leader_address)
                self.addresses.append(err.leader_address)
        else:
            self.failed(address)
        if err.metadata.get("witness"):
            self.failed(address)  # a witness serves no request (reads neither): move on from it


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
CONNECT_TIMEOUT_MAX_S = 2.0


def default_connect_timeout(timeout: float) -> float:
    """How long one try waits for a connection unless told: a share of the deadline, so two hung nodes
    still leave time for a third."""
    return min(CONNECT_TIMEOUT_MAX_S, timeout / 3)


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


def outcome_unknown(err: RaftKVError, kind: str) -> bool:
    """Was this write sent, and then its answer lost? A deadline that passed after sending, a connection
    that broke after sending, or a node that says it stopped with the write in its log."""
    if kind not in WRITES:
        return False
    if err.reason == "OUTCOMEUNKNOWN":
        return True
    if err.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return err.reason in ("", "DEADLINE")
    return err.code == grpc.StatusCode.UNAVAILABLE and not err.reason and not never_sent(err)


def duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def sick(err: RaftKVError) -> bool:
    """Does this failure say the node is sick (it counts against its circuit breaker), rather than being
    an answer (a redirect, an error about the request)?"""
    if err.reason in ("OVERLOADED", "TLS", "RAFT_LOOP_HELD_UP"):
        return True
    return err.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and not err.reason


class Attempts:
    """One call's tries: where to send the next one, how long to wait for its connection and for its
    answer, and, after a failure, whether to try again (and after what pause) or to give up with the
    typed error. Shared by the sync and the asyncio client, which differ only in how they wait.

    A call goes: `next()` (address, connect budget) -> wait for the channel -> `not_connected()` if it
    did not get ready, else `send()` (the call's own timeout) -> the RPC -> `failed()` on an error."""

    def __init__(self, endpoints: Endpoints, kind: str, admin: bool, timeout: float, endpoint: str | None,
                 connect_timeout: float | None = None, dial_bound: bool = False,
                 resilience: Resilience | None = None, numbered: bool = False) -> None:
        """`numbered`: the write carries a client session and sequence number (exactly-once), so one whose
        outcome is unknown is retried: the cluster applies it at most once and answers the first result."""
        self.numbered = numbered
        self.in_doubt: tuple[str, RaftKVError] | None = None
        """A try of this numbered write whose outcome was unknown (address, error), while it is retried."""
        self.endpoints = endpoints
        self.resilience = resilience or Resilience()
        self.resilience.budget.request()
        # dial_bound: give up once every endpoint (or the pinned one) has failed to connect and none has
        # carried anything, as etcdctl's --dial-timeout does, instead of retrying until the deadline.
        self.dial_bound = dial_bound
        self.unconnected: set[str] = set()
        self.kind = kind
        self.prefer_leader = kind != "read" or admin
        self.timeout = timeout
        self.connect_timeout = default_connect_timeout(timeout) if connect_timeout is None else connect_timeout
        self.endpoint = endpoint
        self.deadline = time.monotonic() + timeout
        self.count = 0
        self.last: RaftKVError | None = None
        self.budget = timeout
        self.cut_short = False
        self.sent_any = False
        self.tls_failed: dict[str, TlsHandshakeError] = {}

    def hold(self) -> float:
        """Seconds to wait before the next try because every endpoint it may use has its circuit breaker
        open (0: one may be tried now). CircuitOpenError, without waiting, when none reopens in time."""
        now = time.monotonic()
        candidates = [self.endpoint] if self.endpoint else self._candidates()
        waits = [self.resilience.breaker(a).reopens_in(now) for a in candidates]
        wait = min(waits)
        if wait <= 0:
            return 0.0
        if now + wait < self.deadline:
            return wait
        for a in candidates:
            self.resilience.breaker(a).reject()
        raise self.circuit_open(candidates, wait)

    def _candidates(self) -> list[str]:
        first = self.endpoints.pick(self.prefer_leader)
        addrs = self.endpoints.addresses
        start = addrs.index(first) if first in addrs else 0
        ordered = [first] + [addrs[(start + i) % len(addrs)] for i in range(len(addrs))]
        return list(dict.fromkeys(ordered))

    def circuit_open(self, candidates: list[str], wait: float) -> CircuitOpenError:
        states = {a: self.resilience.breaker(a).state.value for a in candidates}
        names = ", ".join(f"{self.endpoints.name(a)} {st}" for a, st in states.items())
        last = f" (last: {first_line(str(self.last))})" if self.last else ""
        return CircuitOpenError(f"not sent: circuit breaker open for every endpoint ({names}); the next probe is "
                                f"in {duration(wait)}, after this call's deadline{last}", breakers=states)

    def next(self) -> tuple[str, float]:
        """(address, seconds to wait for its connection) for the next try: the preferred endpoint, or the
        next one whose circuit breaker lets a call through. DeadlineError once the time is up."""
        now = time.monotonic()
        remaining = self.deadline - now
        if remaining <= 0:
            raise self.timed_out()
        candidates = [self.endpoint] if self.endpoint else self._candidates()
        for address in candidates:
            if self.resilience.breaker(address).allow(now):
                return address, min(self.connect_timeout, remaining)
        raise self.circuit_open(candidates, min(self.resilience.breaker(a).reopens_in(now) for a in candidates))

    def succeeded(self, address: str) -> None:
        """The try at `address` got an answer."""
        self.resilience.breaker(address).success()

    def not_connected(self, address: str, waited: float) -> float:
        """The channel was not ready in time, so nothing was sent: any request may try elsewhere (no retry
        token is spent: the cluster carried nothing)."""
        self.resilience.breaker(address).failure(time.monotonic())
        self.endpoints.failed(address)
        self.last = UnavailableError(f"{self.endpoints.name(address)} did not connect within {duration(waited)}",
                                     grpc.StatusCode.UNAVAILABLE)
        self._unconnected(address)
        return 0.0

    def _unconnected(self, address: str) -> None:
        """With `dial_bound`: `address` could not be connected to; raise once no endpoint is left to try."""
        if not self.dial_bound or self.sent_any:
            return
        self.unconnected.add(address)
        wanted = {self.endpoint} if self.endpoint is not None else set(self.endpoints.addresses)
        if wanted <= self.unconnected:
            each = "" if len(wanted) == 1 else " each"
            fate = ": the write was not sent, so it was not applied" if self.kind in WRITES else ""
            raise UnavailableError(f"no endpoint connected within the dial timeout ({duration(self.connect_timeout)}"
                                   f"{each}){fate} (last: {self.last})", grpc.StatusCode.UNAVAILABLE) from None

    def send(self) -> float:
        """Seconds the call may take, now that its channel is ready; DeadlineError if no time is left (then
        it is not sent)."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise self.timed_out()
        self.budget = attempt_timeout(self.kind, remaining, self.timeout, len(self.endpoints.addresses),
                                      self.endpoint is not None)
        self.cut_short = self.budget < remaining
        return self.budget

    def timed_out(self) -> DeadlineError:
        """The error for a call whose time ran out between tries (nothing is in doubt, unless a numbered
        write's earlier try was: then its outcome is still unknown)."""
        if self.in_doubt is not None:
            address, err = self.in_doubt
            unknown = self._unknown(address, self.endpoints.name(address), err)
            return OutcomeUnknownDeadlineError(f"{unknown} (retried with its sequence number until the deadline)",
                                               grpc.StatusCode.DEADLINE_EXCEEDED, err.reason, err.metadata,
                                               address=address)
        if self.tls_failed and isinstance(self.last, TlsHandshakeError):
            return self.last
        if isinstance(self.last, DeadlineError):
            return self.last
        last = f" (last: {self.last})" if self.last else ""
        if self.kind in WRITES:
            fate = ("the write was not applied: every node that received it refused it before proposing"
                    if self.sent_any else "the write was not sent, so it was not applied")
            return DeadlineError(f"deadline exceeded after {duration(self.timeout)}: {fate}{last}",
                                 grpc.StatusCode.DEADLINE_EXCEEDED)
        return DeadlineError(f"deadline exceeded after {duration(self.timeout)}{last}",
                             grpc.StatusCode.DEADLINE_EXCEEDED)

    def failed(self, address: str, e: grpc.RpcError | RaftKVError | TimeoutError, tls_cause: str | None = None
               ) -> float:
        """Learn from a failed try (a failed call, an operation's own error from a batch, or our own
        timeout); returns the pause before the next one, or raises the error to give up. `tls_cause`:
        what the caller's TLS diagnosis found wrong with this connection, if anything."""
        err = as_error(e)
        breaker = self.resilience.breaker(address)
        if tls_cause or sick(err):
            breaker.failure(time.monotonic())
        else:
            breaker.success()  # it answered: a redirect or a refusal is not a sick node
        redirect = bool(isinstance(err, NotLeaderError) and err.leader_address and err.leader_address != address)
        self.endpoints.note_leader(address, err)
        where = self.endpoints.name(address)
        if tls_cause:
            # Retrying cannot fix TLS set up wrong: try each other endpoint once, then give up.
            tls_err = TlsHandshakeError(tls_cause, grpc.StatusCode.UNAVAILABLE, "TLS")
            self.tls_failed[address] = tls_err
            self.endpoints.failed(address)
            self.last = tls_err
            if self.endpoint is not None or set(self.endpoints.addresses) <= set(self.tls_failed):
                raise tls_err from None
            return 0.0
        if not (err.code == grpc.StatusCode.UNAVAILABLE and never_sent(err)):
            self.sent_any = True
        numbered_retry = False
        if self.in_doubt is not None and err.reason in ("SESSION_UNKNOWN", "SESSION_RESULT_NOT_KEPT"):
            raise self._unknown(address, where, err) from None  # the session cannot tell any more
        if outcome_unknown(err, self.kind):
            if not self.numbered or self.endpoint is not None:
                raise self._unknown(address, where, err) from None
            # Numbered: the same (session, sequence) again is applied at most once. Elsewhere if the
            # connection is what failed.
            self.in_doubt = (address, err)
            self.resilience.unknown_retries += 1
            numbered_retry = True
            if err.code == grpc.StatusCode.UNAVAILABLE and not err.reason:
                self.endpoints.failed(address)
        if err.reason in GO_ELSEWHERE:
            self.endpoints.failed(address)  # refused before doing anything: another member may serve it
        if err.code == grpc.StatusCode.UNAVAILABLE and not err.reason:
            self.endpoints.failed(address)
            err = UnavailableError(f"{where}: {err}", err.code)
            if never_sent(err):
                self.last = err
                self._unconnected(address)
        elif err.code == grpc.StatusCode.DEADLINE_EXCEEDED and not err.reason:
            if self.cut_short:
                self.endpoints.failed(address)  # our share ran out there: try the next endpoint at once
                self.last = UnavailableError(f"{where}: no answer within {duration(self.budget)}", err.code)
                return 0.0
            err = DeadlineError(f"deadline exceeded after {duration(self.timeout)} at {where}", err.code)
        if not numbered_retry and (self.endpoint is not None or not retryable(err, self.kind)):
            if self.in_doubt is not None:  # an earlier try may have been applied
                raise self._unknown(self.in_doubt[0], self.endpoints.name(self.in_doubt[0]), self.in_doubt[1]) \
                    from None
            raise err from None
        if err.reason == "OVERLOADED" and self.kind == "read":
            self.endpoints.failed(address)  # another node may have room for a read
        self.last = err
        if not redirect and not never_sent(err) and not self.resilience.budget.try_spend():
            if self.in_doubt is not None:
                raise self._unknown(self.in_doubt[0], self.endpoints.name(self.in_doubt[0]), self.in_doubt[1]) \
                    from None
            raise type(err)(f"{err} (not retried: this client's retry budget is spent; the cluster is failing "
                            "many requests)", err.code, err.reason, err.metadata) from None
        settings = self.resilience.retry_settings
        hint = pushback_seconds(err.metadata, settings) if err.reason == "OVERLOADED" else None
        wait = hint if hint is not None else full_jitter(self.count, settings)
        pause = min(wait, max(0.0, self.deadline - time.monotonic()))
        self.count += 1
        return pause

    def _unknown(self, address: str, where: str, err: RaftKVError) -> OutcomeUnknownError:
        if err.code == grpc.StatusCode.DEADLINE_EXCEEDED:
            cause = f"deadline exceeded after {duration(self.timeout)} at {where}"
            cls: type[OutcomeUnknownError] = OutcomeUnknownDeadlineError
        elif err.reason:
            cause, cls = f"{where}: {err}", OutcomeUnknownUnavailableError
        else:
            cause = f"connection to {where} lost after the write was sent: {first_line(str(err))}"
            cls = OutcomeUnknownUnavailableError
        return cls(f"outcome unknown: the write may or may not have been applied ({cause})", err.code,
                   err.reason, err.metadata, address=address)


def as_error(e: grpc.RpcError | RaftKVError | TimeoutError) -> RaftKVError:
    if isinstance(e, grpc.RpcError):
        return from_rpc_error(e)
    if isinstance(e, RaftKVError):
        return e
    return DeadlineError(str(e) or "deadline exceeded", grpc.StatusCode.DEADLINE_EXCEEDED)


def first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""
