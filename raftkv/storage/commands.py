"""State-machine commands: what a client write becomes in the log. msgpack-encoded, validated by the API
before proposing, and applied deterministically by every node.

A key-value is reported as (key, value, create_revision, mod_revision, version), etcd's model: the
revision of a change is the log index of the entry that made it; version counts puts since creation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from . import sessions
from .sessions import MAX_TTL_S as MAX_SESSION_TTL_S  # noqa: F401
from .sessions import PREFIX as SESSION_PREFIX  # noqa: F401
from .sessions import (  # noqa: F401 - the session commands are part of the command vocabulary
    ExpireSession,
    KeepAliveSession,
    RegisterSession,
    SessionCommand,
    SessionRegistered,
    SessionWrite,
)
from .sessions import reserved as reserved_key  # noqa: F401

TARGETS = ("value", "version", "create", "mod", "lease", "exists")
RESULTS = ("=", "!=", "<", ">")
MAX_LEASE_ID = (1 << 63) - 1


@dataclass(slots=True, frozen=True)
class Put:
    key: bytes
    value: bytes
    prev_kv: bool = False
    lease: int = 0
    """The lease the key is attached to (0: none); the key is deleted when the lease ends."""


@dataclass(slots=True, frozen=True)
class Delete:
    key: bytes
    range_end: bytes = b""
    prev_kv: bool = False


@dataclass(slots=True, frozen=True)
class Range:
    key: bytes
    range_end: bytes = b""
    limit: int = 0
    keys_only: bool = False
    count_only: bool = False


@dataclass(slots=True, frozen=True)
class Compare:
    key: bytes
    target: str  # one of TARGETS
    result: str  # one of RESULTS
    operand: Any  # bytes for value; int for version/create/mod; bool for exists


@dataclass(slots=True, frozen=True)
class Txn:
    """Compares, then the operations of the branch they choose. An operation may itself be a Txn (etcd's
    nested transaction): every compare on the chosen path is evaluated against the state before any
    operation of the whole transaction applies, as etcd does."""

    compares: tuple[Compare, ...] = ()
    success: tuple[Put | Delete | Range | Txn, ...] = ()
    failure: tuple[Put | Delete | Range | Txn, ...] = ()


@dataclass(slots=True, frozen=True)
class LeaseGrant:
    """A lease of `ttl` seconds; `lease_id` 0: the lease's id is the revision that grants it."""

    lease_id: int
    ttl: int


@dataclass(slots=True, frozen=True)
class LeaseRevoke:
    """End a lease and delete its keys; `expired`: the leader decided its TTL ran out (not a client)."""

    lease_id: int
    expired: bool = False


@dataclass(slots=True, frozen=True)
class CompactHistory:
    """Discard the change history before `revision` on every node (`kv compact REV`)."""

    revision: int


LeaseCommand = LeaseGrant | LeaseRevoke | CompactHistory
Command = Put | Delete | Txn | LeaseGrant | LeaseRevoke | CompactHistory


@dataclass(slots=True)
class KV:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(slots=True)
class PutResult:
    revision: int
    prev: KV | None = None


@dataclass(slots=True)
class DeleteResult:
    revision: int
    deleted: int
    prev: list[KV] = field(default_factory=list)


@dataclass(slots=True)
class RangeResult:
    kvs: list[KV]
    count: int
    more: bool


@dataclass(slots=True)
class TxnResult:
    revision: int
    succeeded: bool
    results: list[PutResult | DeleteResult | RangeResult | TxnResult]


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that selects every key starting with `prefix` (etcd's rule; b"\\0" = to the end)."""
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\0"


def _txn_to_wire(cmd: Txn) -> list[Any]:
    return ["t", [[c.key, c.target, c.result, c.operand] for c in cmd.compares],
            [_op_to_wire(o) for o in cmd.success], [_op_to_wire(o) for o in cmd.failure]]


def _txn_from_wire(w: list[Any]) -> Txn:
    compares = tuple(Compare(c[0], c[1], c[2], c[3]) for c in w[1])
    for c in compares:
        if c.target not in TARGETS or c.result not in RESULTS:
            raise ValueError(f"bad compare {c.target} {c.result}")
    return Txn(compares, tuple(_op_from_wire(o) for o in w[2]), tuple(_op_from_wire(o) for o in w[3]))


def _op_to_wire(op: Put | Delete | Range | Txn) -> list[Any]:
    if isinstance(op, Txn):
        return _txn_to_wire(op)
    if isinstance(op, Put):
        # The lease is an optional trailing element: a put without one encodes as before.
        return ["p", op.key, op.value, op.prev_kv] + ([op.lease] if op.lease else [])
    if isinstance(op, Delete):
        return ["d", op.key, op.range_end, op.prev_kv]
    return ["r", op.key, op.range_end, op.limit, op.keys_only, op.count_only]


def _op_from_wire(w: list[Any]) -> Put | Delete | Range | Txn:
    kind = w[0]
    if kind == "t":
        return _txn_from_wire(w)
    if kind == "p":
        return Put(w[1], w[2], bool(w[3]), int(w[4]) if len(w) > 4 else 0)
    if kind == "d":
        return Delete(w[1], w[2], bool(w[3]))
    if kind == "r":
        return Range(w[1], w[2], int(w[3]), bool(w[4]), bool(w[5]))
    raise ValueError(f"unknown operation {kind!r}")


def _lease_to_wire(cmd: LeaseCommand) -> list[Any]:
    if isinstance(cmd, LeaseGrant):
        return ["lg", cmd.lease_id, cmd.ttl]
    if isinstance(cmd, LeaseRevoke):
        return ["lr", cmd.lease_id, cmd.expired]
    return ["lk", cmd.revision]


def _lease_from_wire(w: list[Any]) -> LeaseCommand:
    if w[0] == "lg":
        return LeaseGrant(int(w[1]), int(w[2]))
    if w[0] == "lr":
        return LeaseRevoke(int(w[1]), bool(w[2]))
    if w[0] == "lk":
        return CompactHistory(int(w[1]))
    raise ValueError(f"unknown lease command {w[0]!r}")


def encode(cmd: Command | sessions.SessionCommand) -> bytes:
    if isinstance(cmd, sessions.SessionCommand):
        return msgpack.packb(sessions.to_wire(cmd, _op_to_wire), use_bin_type=True)
    if isinstance(cmd, (LeaseGrant, LeaseRevoke, CompactHistory)):
        return msgpack.packb(_lease_to_wire(cmd), use_bin_type=True)
    body = _op_to_wire(cmd)
    return msgpack.packb(body, use_bin_type=True)


def decode(data: bytes) -> Command | sessions.SessionCommand:
    try:
        w = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException) as e:
        raise ValueError(f"undecodable command: {e}") from None
    if not isinstance(w, list) or not w:
        raise ValueError("malformed command")
    if isinstance(w[0], str) and w[0].startswith("s"):  # client sessions (sessions.py)
        return sessions.from_wire(w, _cmd_from_wire)
    if isinstance(w[0], str) and w[0].startswith("h"):  # high-availability operations (ha_commands.py)
        from .ha_commands import from_wire

        return from_wire(w)  # type: ignore[return-value]
    if isinstance(w[0], str) and w[0].startswith("l"):
        return _lease_from_wire(w)
    return _cmd_from_wire(w)


def _cmd_from_wire(w: list[Any]) -> Command:
    if not isinstance(w, list) or not w:
        raise ValueError("malformed command")
    op = _op_from_wire(w)
    if isinstance(op, Range):
        raise ValueError("a range is a read, not a command")
    return op


def adds_bytes(cmd: Command | sessions.SessionCommand) -> bool:
    """Whether applying `cmd` may store more than it removes: any put in it. A command of deletes only
    (DeleteRange, or a Txn whose branches hold deletes and ranges alone) is what a node under the NOSPACE
    alarm still takes, as etcd does: it is how space is freed."""
    if isinstance(cmd, sessions.SessionWrite):
        return adds_bytes(cmd.command)
    if isinstance(cmd, sessions.RegisterSession):
        return True
    if isinstance(cmd, Txn):
        return any(adds_bytes(op) for op in cmd.success + cmd.failure if isinstance(op, (Put, Txn)))
    return isinstance(cmd, (Put, LeaseGrant))
