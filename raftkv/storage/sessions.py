"""Client sessions for exactly-once writes (Raft dissertation §6.3), applied by the state machine.

A client registers a session through the log (`RegisterSession`; its id is the index of that entry, so
unique in the cluster's history) and numbers its writes 1, 2, 3, ... A numbered write travels as a
`SessionWrite` wrapping the ordinary command. Applying it, the state machine first looks the session up:
- a sequence number it holds a result for: that result is returned and nothing is applied again (the
  write was retried after its answer was lost);
- a new sequence number: the command is applied and its result kept;
- an unknown (never registered, or expired) session: the write fails alone with `SessionUnknown`, since
  the state machine cannot tell whether it was applied before: the client learns the outcome is unknown.

Per session at most `WINDOW` results are kept (the newest sequence numbers; a client keeps at most that
many numbered writes outstanding), and each kept result at most `MAX_RESULT_BYTES` (a larger one, e.g.
a transaction's big range, is kept as "applied, result not kept"). At most `MAX_SESSIONS` sessions exist.
A session expires by a committed `ExpireSession` that the leader proposes once the session has seen no
write or keep-alive for its TTL on the leader's clock (layers/client_sessions.py); it names the index of
the session's last activity, so a session used meanwhile is not expired.

Where sessions live: records of the `kv` sub-database under `PREFIX`, a key range no client may write
(the api refuses such keys and reads never show them, see `reserved`). So the write-back buffer, the
applied index beside it, snapshots (which copy `kv` verbatim) and restarts carry sessions exactly as they
carry keys, with no machinery of their own. Wire tags start with "s" (commands.py)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from .errors import ResultNotKept, SessionUnknown, TooManySessions

PREFIX = b"\xff\xff\xff\xff\xff\xff\xff\xffraftkv/session/"
"""Session records: PREFIX + u64 big-endian session id -> msgpack record."""
WINDOW = 32
MAX_RESULT_BYTES = 64 << 10
MAX_SESSIONS = 10_000
DEFAULT_TTL_S = 60
MAX_TTL_S = 24 * 3600
_U64 = struct.Struct(">Q")


def reserved(key: bytes) -> bool:
    """A key that holds sessions, never a client's."""
    return key.startswith(PREFIX)


def session_key(session_id: int) -> bytes:
    return PREFIX + _U64.pack(session_id)


@dataclass(slots=True, frozen=True)
class RegisterSession:
    ttl_s: int


@dataclass(slots=True, frozen=True)
class KeepAliveSession:
    session_id: int


@dataclass(slots=True, frozen=True)
class ExpireSession:
    session_id: int
    last_active: int  # the index of its last activity the leader saw; a later one keeps it alive


@dataclass(slots=True, frozen=True)
class SessionWrite:
    session_id: int
    sequence: int
    command: Any  # commands.Put | Delete | Txn


SessionCommand = RegisterSession | KeepAliveSession | ExpireSession | SessionWrite


@dataclass(slots=True)
class SessionRegistered:
    session_id: int
    ttl_s: int


@dataclass(slots=True)
class SessionRecord:
    ttl_s: int
    last_active: int
    results: dict[int, Any]  # sequence -> result wire (None: applied, result not kept)

    def encode(self) -> bytes:
        return msgpack.packb([self.ttl_s, self.last_active, [[s, r] for s, r in sorted(self.results.items())]],
                             use_bin_type=True)

    @staticmethod
    def decode(raw: bytes) -> SessionRecord:
        ttl, last, results = msgpack.unpackb(raw, raw=False)
        return SessionRecord(int(ttl), int(last), {int(s): r for s, r in results})


# -- wire ------------------------------------------------------------------------------------------------
def to_wire(cmd: SessionCommand, op_wire: Any) -> list[Any]:
    """`op_wire(command)`: the wire form of a wrapped command (commands.py's)."""
    if isinstance(cmd, RegisterSession):
        return ["sr", cmd.ttl_s]
    if isinstance(cmd, KeepAliveSession):
        return ["sk", cmd.session_id]
    if isinstance(cmd, ExpireSession):
        return ["sx", cmd.session_id, cmd.last_active]
    return ["sw", cmd.session_id, cmd.sequence, op_wire(cmd.command)]


def from_wire(w: list[Any], op_from_wire: Any) -> SessionCommand:
    tag = w[0]
    if tag == "sr":
        return RegisterSession(int(w[1]))
    if tag == "sk":
        return KeepAliveSession(int(w[1]))
    if tag == "sx":
        return ExpireSession(int(w[1]), int(w[2]))
    if tag == "sw":
        if int(w[2]) < 1:
            raise ValueError("a session write's sequence number starts at 1")
        return SessionWrite(int(w[1]), int(w[2]), op_from_wire(w[3]))
    raise ValueError(f"unknown session command {tag!r}")


# -- results as stored ---------------------------------------------------------------------------------
def _kv_wire(kv: Any) -> list[Any] | None:
    return None if kv is None else [kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version]


def result_to_wire(res: Any) -> Any:
    from .commands import DeleteResult, PutResult, RangeResult, TxnResult

    if isinstance(res, PutResult):
        return ["p", res.revision, _kv_wire(res.prev)]
    if isinstance(res, DeleteResult):
        return ["d", res.revision, res.deleted, [_kv_wire(k) for k in res.prev]]
    if isinstance(res, RangeResult):
        return ["r", [_kv_wire(k) for k in res.kvs], res.count, res.more]
    if isinstance(res, TxnResult):
        return ["t", res.revision, res.succeeded, [result_to_wire(r) for r in res.results]]
    if isinstance(res, Exception):
        return ["e", str(res)]
    raise TypeError(f"cannot keep a result of type {type(res).__name__}")


def _kv_from(w: list[Any] | None) -> Any:
    from .commands import KV

    return None if w is None else KV(bytes(w[0]), bytes(w[1]), int(w[2]), int(w[3]), int(w[4]))


def result_from_wire(w: Any) -> Any:
    from .commands import DeleteResult, PutResult, RangeResult, TxnResult
    from .errors import CommandFailed

    tag = w[0]
    if tag == "p":
        return PutResult(int(w[1]), _kv_from(w[2]))
    if tag == "d":
        return DeleteResult(int(w[1]), int(w[2]), [_kv_from(k) for k in w[3]])
    if tag == "r":
        return RangeResult([_kv_from(k) for k in w[1]], int(w[2]), bool(w[3]))
    if tag == "t":
        return TxnResult(int(w[1]), bool(w[2]), [result_from_wire(r) for r in w[3]])
    return CommandFailed(str(w[1]))


# -- applying --------------------------------------------------------------------------------------------
def get_record(view: Any, session_id: int) -> SessionRecord | None:
    raw = view.get(session_key(session_id))
    return None if raw is None else SessionRecord.decode(raw)


def count(view: Any) -> int:
    n = 0
    for k, _ in view.scan(PREFIX):
        if not reserved(k):
            break
        n += 1
    return n


def records(view: Any) -> list[tuple[int, SessionRecord]]:
    """Every session, by id (for the leader's expiry)."""
    out = []
    for k, raw in view.scan(PREFIX):
        if not reserved(k):
            break
        out.append((_U64.unpack(k[len(PREFIX):])[0], SessionRecord.decode(raw)))
    return out


def apply(view: Any, cmd: SessionCommand, index: int, apply_command: Any) -> Any:
    """Apply one session command at log `index` over `view` (the state machine's, see state_machine.py);
    `apply_command(view, command, index)` applies a wrapped write. A refusal (SessionUnknown,
    ResultNotKept, TooManySessions) is returned as the result, not raised: the entry is applied, its
    writer gets the error, and every node decides the same."""
    if isinstance(cmd, RegisterSession):
        if count(view) >= MAX_SESSIONS:
            return TooManySessions(f"too many client sessions ({MAX_SESSIONS}); retry once idle ones expire")
        ttl = min(max(1, cmd.ttl_s or DEFAULT_TTL_S), MAX_TTL_S)
        view.put(session_key(index), SessionRecord(ttl, index, {}).encode())
        return SessionRegistered(index, ttl)
    rec = get_record(view, cmd.session_id)
    if isinstance(cmd, KeepAliveSession):
        if rec is None:
            return False
        rec.last_active = index
        view.put(session_key(cmd.session_id), rec.encode())
        return True
    if isinstance(cmd, ExpireSession):
        if rec is not None and rec.last_active == cmd.last_active:
            view.delete(session_key(cmd.session_id))
            return True
        return False
    if rec is None:
        return SessionUnknown(f"client session {cmd.session_id} is unknown (it expired, or was never registered): "
                             "whether an earlier try of this write was applied cannot be told")
    if cmd.sequence in rec.results:
        kept = rec.results[cmd.sequence]
        if kept is None:
            return ResultNotKept(f"write {cmd.sequence} of session {cmd.session_id} was applied already; its result "
                                "was too large to keep")
        return result_from_wire(kept)
    if rec.results and cmd.sequence < min(rec.results) and len(rec.results) >= WINDOW:
        return ResultNotKept(f"write {cmd.sequence} of session {cmd.session_id} is older than the {WINDOW} results "
                            "kept; whether it was applied cannot be told")
    result = apply_command(view, cmd.command, index)
    wire = result_to_wire(result)
    if len(msgpack.packb(wire, use_bin_type=True)) > MAX_RESULT_BYTES:
        wire = None
    rec.results[cmd.sequence] = wire
    while len(rec.results) > WINDOW:
        del rec.results[min(rec.results)]
    rec.last_active = index
    view.put(session_key(cmd.session_id), rec.encode())
    return result
