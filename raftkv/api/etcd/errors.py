"""etcd's error statuses: the gRPC code and the exact message etcd sends, which etcd clients parse
(clientv3's rpctypes match on the message text) to decide what the error means and whether to retry.

Every etcd service method is wrapped by `etcd_rpc`: a raftkv error becomes the etcd error it stands for
(a raftkv refusal etcd has no word for keeps raftkv's code and message). The strings were checked against
a real etcd 3.4 (tests/integration/data/etcd-3.4-transcript.json)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

import grpc
import structlog

from ...core import ConfChangeRejected
from ...server.errors import NoSpace, NotLeader, SyncTimeout
from ..errors import classify

log = structlog.get_logger("raftkv.api.etcd")
T = TypeVar("T")
Code = grpc.StatusCode


class EtcdError(Exception):
    """An error as etcd reports it: a status code and etcd's message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _e(code: grpc.StatusCode, message: str) -> Callable[[], EtcdError]:
    return lambda: EtcdError(code, message)


# The subset of etcd's api/v3rpc/rpctypes that raftkv can produce, by etcd's own names.
EMPTY_KEY = _e(Code.INVALID_ARGUMENT, "etcdserver: key is not provided")
KEY_NOT_FOUND = _e(Code.INVALID_ARGUMENT, "etcdserver: key not found")
VALUE_PROVIDED = _e(Code.INVALID_ARGUMENT, "etcdserver: value is provided")
LEASE_PROVIDED = _e(Code.INVALID_ARGUMENT, "etcdserver: lease is provided")
TOO_MANY_OPS = _e(Code.INVALID_ARGUMENT, "etcdserver: too many operations in txn request")
DUPLICATE_KEY = _e(Code.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request")
COMPACTED = _e(Code.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
FUTURE_REV = _e(Code.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
NO_SPACE = _e(Code.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")
LEASE_NOT_FOUND = _e(Code.NOT_FOUND, "etcdserver: requested lease not found")
MEMBER_NOT_FOUND = _e(Code.NOT_FOUND, "etcdserver: member not found")
PEER_URL_EXIST = _e(Code.FAILED_PRECONDITION, "etcdserver: Peer URLs already exists")
NOT_ENOUGH_STARTED = _e(Code.FAILED_PRECONDITION,
                        "etcdserver: re-configuration failed due to not enough started members")
NOT_LEARNER = _e(Code.FAILED_PRECONDITION, "etcdserver: can only promote a learner member")
LEARNER_NOT_READY = _e(Code.FAILED_PRECONDITION,
                       "etcdserver: can only promote a learner member which is in sync with leader")
BAD_TRANSFEREE = _e(Code.FAILED_PRECONDITION, "etcdserver: bad leader transferee")
NOT_LEADER = _e(Code.UNAVAILABLE, "etcdserver: not leader")
NO_LEADER = _e(Code.UNAVAILABLE, "etcdserver: no leader")
LEADER_CHANGED = _e(Code.UNAVAILABLE, "etcdserver: leader changed")
TIMEOUT = _e(Code.UNAVAILABLE, "etcdserver: request timed out")
REQUEST_TOO_LARGE = _e(Code.INVALID_ARGUMENT, "etcdserver: request is too large")
TOO_MANY_REQUESTS = _e(Code.RESOURCE_EXHAUSTED, "etcdserver: too many requests")
CORRUPT = _e(Code.DATA_LOSS, "etcdserver: corrupt cluster")

_BY_REASON: dict[str, Callable[[], EtcdError]] = {
    "REQUEST_TOO_LARGE": REQUEST_TOO_LARGE,
    "OVERLOADED": TOO_MANY_REQUESTS,
    "NOSPACE": NO_SPACE,
    "CORRUPT": CORRUPT,
    "PROPOSALLOST": LEADER_CHANGED,
    "LEADERSHIPLOST": LEADER_CHANGED,
    "DEADLINE": TIMEOUT,
}


def to_etcd(e: BaseException) -> EtcdError:
    """The etcd error a raftkv failure stands for; raftkv's own status where etcd has none."""
    if isinstance(e, EtcdError):
        return e
    if isinstance(e, NotLeader):
        return NOT_LEADER() if e.leader_id else NO_LEADER()
    if isinstance(e, NoSpace):
        return NO_SPACE()
    if isinstance(e, ConfChangeRejected):
        text = str(e)
        if "has not caught up" in text:
            return LEARNER_NOT_READY()
        if "is already used by node" in text:
            return PEER_URL_EXIST()
        if "cannot take over leadership" in text or "is not a voter" in text:
            return BAD_TRANSFEREE()
        if "could not commit" in text or "would survive" in text or "writes would stop" in text:
            return NOT_ENOUGH_STARTED()
    if isinstance(e, SyncTimeout):  # only raftkv-aware clients ask for sync: raftkv's own status
        err = classify(e)
        return EtcdError(err.code, str(err))
    err = classify(e)
    known = _BY_REASON.get(err.reason)
    if known is not None:
        return known()
    return EtcdError(err.code, str(err))


def etcd_rpc(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Wrap an etcd servicer method: any failure becomes etcd's status code and message."""

    @wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            removal = getattr(getattr(self, "host", None), "removal", None)
            if removal is not None and removal.removed:
                raise removal.error()
            return await fn(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except grpc.aio.AioRpcError as e:  # a forwarded call failed: its status is already etcd's
            await context.abort(e.code(), e.details() or "")
            raise
        except BaseException as e:  # noqa: BLE001 - every failure must become a status
            err = to_etcd(e)
            await context.abort(err.code, str(err))
            raise

    return wrapper
