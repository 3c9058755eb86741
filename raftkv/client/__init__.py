"""Python clients for raftkv: `Client` (blocking) and `AsyncClient` (asyncio)."""

from .async_client import AsyncClient
from .errors import (
    DeadlineError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    NotLeaderError,
    OutcomeUnknownDeadlineError,
    OutcomeUnknownError,
    OutcomeUnknownUnavailableError,
    RaftKVError,
    RequestTooLargeError,
    SyncTimeoutError,
    TlsHandshakeError,
    UnavailableError,
)
from .requests import compare, op_delete, op_get, op_put
from .sync_client import Client

__all__ = ["AsyncClient", "Client", "DeadlineError", "FailedPreconditionError", "InvalidArgumentError",
           "NotFoundError", "NotLeaderError", "OutcomeUnknownDeadlineError", "OutcomeUnknownError",
           "OutcomeUnknownUnavailableError", "RaftKVError", "RequestTooLargeError", "SyncTimeoutError",
           "TlsHandshakeError",
           "UnavailableError", "compare", "op_delete", "op_get", "op_put"]
