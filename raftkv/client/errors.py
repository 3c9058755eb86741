"""Typed client errors, decoded from the gRPC status and its ErrorInfo detail."""

from __future__ import annotations

import re

import grpc

from ..status import error_info


class RaftKVError(Exception):
    """Base of every raftkv client error. `code` is the gRPC status code, `reason` raftkv's reason."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None, reason: str = "",
                 metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.metadata = metadata or {}


class NotLeaderError(RaftKVError):
    @property
    def leader_address(self) -> str:
        return self.metadata.get("leader_address", "")


class UnavailableError(RaftKVError):
    """No node could serve the request in time; safe to retry later."""


class CircuitOpenError(UnavailableError):
    """Not sent: the circuit breaker of every endpoint this call may use is open (they failed recently
    and are cooling down), and none reopens before the call's deadline. `breakers`: address -> state."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None, reason: str = "CIRCUIT_OPEN",
                 metadata: dict[str, str] | None = None, breakers: dict[str, str] | None = None) -> None:
        super().__init__(message, code or grpc.StatusCode.UNAVAILABLE, reason, metadata or {})
        self.breakers = breakers or {}


class OverloadedError(RaftKVError):
    """The node refused the request before doing anything (RESOURCE_EXHAUSTED, OVERLOADED): nothing was
    applied. `resource` names what was over its high watermark, `retry_after_ms` the server's hint."""

    @property
    def resource(self) -> str:
        return self.metadata.get("resource", "")

    @property
    def retry_after_ms(self) -> int:
        raw = self.metadata.get("retry_after_ms", "")
        return int(raw) if raw.isdigit() else 0


class DeadlineError(RaftKVError):
    """The deadline passed. For a write the outcome may be unknown, except SyncTimeout below."""


class SyncTimeoutError(DeadlineError):
    """A `sync` write is committed but not every sync member confirmed it before the deadline."""

    @property
    def index(self) -> int:
        return int(self.metadata.get("index", "0"))

    @property
    def confirmed_by(self) -> list[int]:
        raw = self.metadata.get("confirmed_by", "")
        return [int(x) for x in raw.split(",") if x]


class OutcomeUnknownError(RaftKVError):
    """A write (put, delete, txn, membership change) was sent, and then its answer was lost: the deadline
    passed or the connection broke before the reply came. It may or may not have been applied, and it
    may still be applied later (a leader that holds it can commit it). The client does not retry it:
    without exactly-once sequence numbers a second copy could be applied after another client's write
    and undo it. What to do: read the key back (linearizably) to learn what happened, and write again only
    if applying it twice is harmless for your data.

    Raised as `OutcomeUnknownDeadlineError` (also a `DeadlineError`) or `OutcomeUnknownUnavailableError`
    (also an `UnavailableError`), so code written against those classes keeps catching it."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None, reason: str = "",
                 metadata: dict[str, str] | None = None, address: str = "") -> None:
        super().__init__(message, code, reason, metadata)
        self.address = address
        """The node the write was sent to."""


class OutcomeUnknownDeadlineError(OutcomeUnknownError, DeadlineError):
    """The deadline passed after the write was sent."""


class OutcomeUnknownUnavailableError(OutcomeUnknownError, UnavailableError):
    """The connection broke after the write was sent, or the node said it stopped with the write in its log."""


class TlsHandshakeError(UnavailableError):
    """A node could not be reached because TLS is set up wrong on one side: no client certificate where one
    is required, a certificate that is not trusted or has expired, or TLS on one side only. Retrying cannot
    fix it, so the client does not wait out its deadline; the message names the cause. `reason` is "TLS"."""


class InvalidArgumentError(RaftKVError):
    pass


class FailedPreconditionError(RaftKVError):
    pass


class NotFoundError(RaftKVError):
    pass


class RequestTooLargeError(InvalidArgumentError):
    """The request is over the server's size limit (--max-request-bytes); it was not applied."""


_GRPC_TOO_LARGE = re.compile(r"[Rr]eceived message larger than max \((\d+) vs\. (\d+)\)")


def _too_large(msg: str) -> RaftKVError | None:
    """gRPC's own refusal of a message over the server's receive limit, said in raftkv's terms."""
    m = _GRPC_TOO_LARGE.search(msg)
    if m is None:
        return None
    size, limit = m.groups()
    return RequestTooLargeError(f"request is too large: {size} bytes; the server reads at most {limit} bytes "
                                "per request (its --max-request-bytes plus framing); it was not applied",
                                grpc.StatusCode.RESOURCE_EXHAUSTED, "REQUEST_TOO_LARGE",
                                {"size": size, "limit": limit})


def from_rpc_error(e: grpc.RpcError) -> RaftKVError:
    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else str(e)
    reason, meta = error_info(e)
    return error_from_status(code, details or (code.name if code else "error"), reason, meta)


def error_from_status(code: grpc.StatusCode | None, msg: str, reason: str, meta: dict[str, str]) -> RaftKVError:
    """The typed error for a status (from a failed call, or one operation of a batch)."""
    if reason == "NOT_LEADER":
        return NotLeaderError(msg, code, reason, meta)
    if reason == "SYNC_TIMEOUT":
        return SyncTimeoutError(msg, code, reason, meta)
    if reason == "OVERLOADED":
        return OverloadedError(msg, code, reason, meta)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and not reason and (too_large := _too_large(msg)):
        return too_large
    if reason == "REQUEST_TOO_LARGE":
        return RequestTooLargeError(msg, code, reason, meta)
    cls = {grpc.StatusCode.UNAVAILABLE: UnavailableError, grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineError,
           grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
           grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
           grpc.StatusCode.NOT_FOUND: NotFoundError}.get(code, RaftKVError)  # type: ignore[arg-type]
    return cls(msg, code, reason, meta)
