"""One place that turns what went wrong into a gRPC status a client can act on:
UNAVAILABLE means "retry (perhaps elsewhere)", FAILED_PRECONDITION "do not retry as is",
INVALID_ARGUMENT "the request itself is wrong", DEADLINE_EXCEEDED "the outcome may be unknown",
RESOURCE_EXHAUSTED NOSPACE "this node cannot persist, write elsewhere or later", RESOURCE_EXHAUSTED
OVERLOADED "refused before doing anything, retry after `grpc-retry-pushback-ms`", DATA_LOSS "this node's
stored copy failed its checksum".

Every reply, answer or error, carries the serving node's pressure level in trailing metadata
`raftkv-pressure` (GREEN, YELLOW, RED; layers/admission.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

import grpc
import structlog
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from .. import hop_trace
from ..core import ConfChangeRejected
from ..layers.acks import UnmeetableAck
from ..layers.admission import Admission, Overloaded
from ..layers.session import InvalidToken, TokenAhead, TokenLost
from ..server.corruption import Corrupt
from ..server.errors import HostError, NoSpace, NotLeader, RaftLoopHeldUp, SyncTimeout
from ..server.removal import MemberRemoved
from ..storage import CorruptionError
from ..storage.errors import (
    HistoryOutOfRange,
    LeaseExists,
    LeaseNotFound,
    ResultNotKept,
    SessionUnknown,
    TooManySessions,
)

log = structlog.get_logger("raftkv.api")
DOMAIN = "raftkv.io"
T = TypeVar("T")
PRESSURE = "raftkv-pressure"
PUSHBACK = "grpc-retry-pushback-ms"


def pressure_metadata(host: Any) -> tuple[tuple[str, str], ...]:
    """This node's pressure level as trailing metadata (none for a servicer without a host)."""
    if host is None or not hasattr(host, "cfg"):
        return ()
    return ((PRESSURE, Admission.of(host).level.name),)


class RequestError(Exception):
    """A request that cannot be served as asked; carries its own status code."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "", metadata: dict[str, str] | None = None
                 ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.metadata = metadata or {}


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message, "INVALID_ARGUMENT")


def _status(code: grpc.StatusCode, message: str, reason: str, metadata: dict[str, str]) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=reason or code.name, domain=DOMAIN, metadata=metadata)
    st = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    st.details.add().Pack(info)
    return rpc_status.to_status(st)


def classify(e: BaseException) -> RequestError:
    if isinstance(e, RequestError):
        return e
    if isinstance(e, NotLeader):
        return RequestError(grpc.StatusCode.UNAVAILABLE, str(e), "NOT_LEADER",
                            {"leader_id": str(e.leader_id), "leader_address": e.leader_address})
    if isinstance(e, SyncTimeout):
        return RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, str(e), "SYNC_TIMEOUT",
                            {"index": str(e.index), "term": str(e.term),
                             "confirmed_by": ",".join(map(str, e.confirmed_by)), "committed": "true"})
    if isinstance(e, MemberRemoved):
        return RequestError(grpc.StatusCode.FAILED_PRECONDITION, str(e), "MEMBER_REMOVED")
    if isinstance(e, Overloaded):
        return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e), "OVERLOADED",
                            {"resource": e.resource, "usage": str(e.usage), "high_watermark": str(e.high),
                             "budget": e.budget, "retry_after_ms": str(e.pushback_ms)})
    if isinstance(e, SessionUnknown):
        return RequestError(grpc.StatusCode.FAILED_PRECONDITION, str(e), "SESSION_UNKNOWN")
    if isinstance(e, ResultNotKept):
        return RequestError(grpc.StatusCode.FAILED_PRECONDITION, str(e), "SESSION_RESULT_NOT_KEPT")
    if isinstance(e, TooManySessions):
        return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e), "TOO_MANY_SESSIONS")
    if isinstance(e, NoSpace):
        return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e), "NOSPACE")
    if isinstance(e, RaftLoopHeldUp):
        return RequestError(grpc.StatusCode.UNAVAILABLE, str(e), "RAFT_LOOP_HELD_UP")
    if isinstance(e, Corrupt):  # do not retry: nothing is written until an operator acts
        return RequestError(grpc.StatusCode.FAILED_PRECONDITION, str(e), "CORRUPT")
    if isinstance(e, HostError):
        return RequestError(grpc.StatusCode.UNAVAILABLE, str(e), type(e).__name__.upper())
    if isinstance(e, CorruptionError):
        # Never served, never repaired: the client learns that this node's copy is damaged (another
        # node may serve the read), the operator finds the key and file in the log.
        log.error("refused to serve corrupted data", error=str(e))
        return RequestError(grpc.StatusCode.DATA_LOSS, str(e), "DATA_CORRUPTED")
    if isinstance(e, LeaseNotFound):
        return RequestError(grpc.StatusCode.NOT_FOUND, str(e), "LEASE_NOT_FOUND", {"lease_id": str(e.lease_id)})
    if isinstance(e, LeaseExists):
        return RequestError(grpc.StatusCode.ALREADY_EXISTS, str(e), "LEASE_EXISTS", {"lease_id": str(e.lease_id)})
    if isinstance(e, HistoryOutOfRange):
        return RequestError(grpc.StatusCode.OUT_OF_RANGE, str(e), "COMPACTED", {"oldest_revision": str(e.floor)})
    if isinstance(e, ConfChangeRejected):
        return RequestError(grpc.StatusCode.FAILED_PRECONDITION, str(e), "MEMBERSHIP_CHANGE_REJECTED")
    if isinstance(e, UnmeetableAck):
        return RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(e), "ACK_UNMEETABLE")
    if isinstance(e, TokenAhead):
        return RequestError(grpc.StatusCode.OUT_OF_RANGE, str(e), "SESSION_TOKEN_AHEAD")
    if isinstance(e, TokenLost):
        return RequestError(grpc.StatusCode.FAILED_PRECONDITION, str(e), "SESSION_WRITE_LOST")
    if isinstance(e, InvalidToken):
        return RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(e), "INVALID_SESSION_TOKEN")
    if isinstance(e, (TimeoutError, asyncio.TimeoutError)):
        return RequestError(grpc.StatusCode.DEADLINE_EXCEEDED,
                            "deadline exceeded before the request completed; a write may or may not have been applied",
                            "DEADLINE")
    if isinstance(e, ValueError):
        return RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(e), "INVALID_ARGUMENT")
    log.exception("unexpected error serving a request", error=repr(e))
    return RequestError(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}", "INTERNAL")


async def _abort(context: grpc.aio.ServicerContext, status: grpc.Status, trailing: tuple[tuple[str, str], ...]
                 ) -> None:
    """Fail the call with `status` (its ErrorInfo detail) and our own trailing metadata beside it
    (`abort_with_status` would replace whatever was set before)."""
    await context.abort(status.code, status.details, tuple(status.trailing_metadata) + trailing)


def rpc(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Wrap a servicer method: any exception becomes a precise status with an ErrorInfo detail."""

    @wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            removal = getattr(getattr(self, "host", None), "removal", None)
            if removal is not None and removal.removed:
                raise removal.error()  # a removed member serves nothing, not even stale reads
            if hop_trace.ON:
                hop_trace.mark("rpc.in")
                reply = await fn(self, request, context)
                hop_trace.mark("rpc.out")
            else:
                reply = await fn(self, request, context)
            context.set_trailing_metadata(pressure_metadata(getattr(self, "host", None)))
            return reply
        except asyncio.CancelledError:
            raise
        except grpc.aio.AbortError:
            raise
        except grpc.aio.AioRpcError as e:  # a forwarded call failed: pass its status through
            # The leader's own hints (pushback, its pressure) go along; this node's pressure too.
            passed = tuple((k, v) for k, v in (e.trailing_metadata() or ())
                           if k in (PUSHBACK, "raftkv-leader"))
            await _abort(context, rpc_status.to_status(
                rpc_status.from_call(e) or status_pb2.Status(code=e.code().value[0], message=e.details() or "")),
                pressure_metadata(getattr(self, "host", None)) + passed)
            raise
        except BaseException as e:  # noqa: BLE001 - every failure must become a status
            err = classify(e)
            trailing = list(pressure_metadata(getattr(self, "host", None)))
            if err.reason == "NOT_LEADER" and err.metadata.get("leader_address"):
                trailing.append(("raftkv-leader", err.metadata["leader_address"]))
            if err.reason == "OVERLOADED":
                trailing.append((PUSHBACK, err.metadata["retry_after_ms"]))
            await _abort(context, _status(err.code, str(err), err.reason, err.metadata), tuple(trailing))
            raise

    return wrapper
