"""Python clients for raftkv: `Client` (blocking) and `AsyncClient` (asyncio)."""

from .async_client import AsyncClient
from .errors import (
    CircuitOpenError,
    DeadlineError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    NotLeaderError,
    OutcomeUnknownDeadlineError,
    OutcomeUnknownError,
    OutcomeUnknownUnavailableError,
    OverloadedError,
    RaftKVError,
    RequestTooLargeError,
    SyncTimeoutError,
    TlsHandshakeError,
    UnavailableError,
)
from .requests import compare, op_delete, op_get, op_put
from .resilience import BreakerSettings, BreakerState, RetrySettings
from .sync_client import Client

__all__ = ["AsyncClient", "BreakerSettings", "BreakerState", "CircuitOpenError", "Client", "OverloadedError",
           "RetrySettings", "DeadlineError", "FailedPreconditionError", "InvalidArgumentError",
           "NotFoundError", "NotLeaderError", "OutcomeUnknownDeadlineError", "OutcomeUnknownError",
           "OutcomeUnknownUnavailableError", "RaftKVError", "RequestTooLargeError", "SyncTimeoutError",
           "TlsHandshakeError",
           "UnavailableError", "compare", "op_delete", "op_get", "op_put"]
