"""raftkv's levels through etcd's API: per-request gRPC metadata in, the level achieved out.

An unmodified etcd client sends none of these and gets etcd's semantics (majority writes, linearizable
reads, or serializable ones with `serializable=true`). A raftkv-aware client adds, per request:

    raftkv-ack: semi_sync;min_replicas=1;timeout_ms=500     (leader | majority | semi_sync | sync)
    raftkv-consistency: bounded_staleness;max_staleness_ms=500
                        (linearizable | lease | serializable | bounded_staleness[;max_staleness_ms=N]
                         [;max_lag_entries=N][;strict] | session)
    raftkv-session-token: <token from an earlier reply's trailing metadata>

and reads the level achieved from trailing metadata: `raftkv-ack-achieved` (`semi_sync`, or
`semi_sync;degraded`), `raftkv-consistency-achieved` (with `;staleness_bound_ms=N` for bounded
staleness), `raftkv-session-token`, `raftkv-served-by`. The options are parsed into raftkv's own
`WriteOptions`/`ReadOptions`, so they are validated exactly as raftkv.v1's are."""

from __future__ import annotations

import base64
import binascii

import grpc

from ...layers.acks import AckLevel, WriteOutcome
from ...layers.read_path import ReadPoint
from ...proto.stubs import kv_pb2 as pb
from .errors import EtcdError

ACK = "raftkv-ack"
CONSISTENCY = "raftkv-consistency"
SESSION_TOKEN = "raftkv-session-token"
FORWARDED_KEYS = (ACK, CONSISTENCY, SESSION_TOKEN)
"""Metadata passed on when a follower forwards an etcd request to the leader."""

_ACKS = {"leader": pb.ACK_LEADER, "majority": pb.ACK_MAJORITY, "semi_sync": pb.ACK_SEMI_SYNC, "sync": pb.ACK_SYNC}
_READS = {"linearizable": pb.LINEARIZABLE, "lease": pb.LEASE, "serializable": pb.SERIALIZABLE,
          "bounded_staleness": pb.BOUNDED_STALENESS, "session": pb.SESSION}


def _bad(message: str) -> EtcdError:
    return EtcdError(grpc.StatusCode.INVALID_ARGUMENT, message)


def metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str) and k.startswith("raftkv-")}


def _options(text: str, header: str) -> tuple[str, dict[str, str]]:
    """`level;name=value;flag` -> (level, {name: value, flag: ""})."""
    parts = [p.strip() for p in text.split(";") if p.strip()]
    if not parts:
        raise _bad(f"{header}: empty value")
    opts: dict[str, str] = {}
    for p in parts[1:]:
        name, _, value = p.partition("=")
        opts[name.strip()] = value.strip()
    return parts[0], opts


def _int(header: str, opts: dict[str, str], name: str) -> int:
    try:
        n = int(opts.pop(name))
    except ValueError:
        raise _bad(f"{header}: {name} must be a whole number") from None
    if not 0 <= n < 2**32:
        raise _bad(f"{header}: {name} must be between 0 and 2^32-1")
    return n


def _no_more(header: str, opts: dict[str, str]) -> None:
    if opts:
        raise _bad(f"{header}: unknown option(s) {', '.join(sorted(opts))}")


def write_options(md: dict[str, str]) -> pb.WriteOptions:
    """raftkv's write options from `raftkv-ack` (absent: the server's default ack level)."""
    text = md.get(ACK)
    if text is None:
        return pb.WriteOptions()
    level, opts = _options(text, ACK)
    ack = _ACKS.get(level)
    if ack is None:
        raise _bad(f"{ACK}: unknown level {level!r} (leader, majority, semi_sync or sync)")
    w = pb.WriteOptions(ack=ack)
    if "min_replicas" in opts:
        w.min_replicas = _int(ACK, opts, "min_replicas")
    if "timeout_ms" in opts:
        w.timeout_ms = _int(ACK, opts, "timeout_ms")
    _no_more(ACK, opts)
    return w


def read_options(md: dict[str, str], serializable: bool) -> pb.ReadOptions:
    """raftkv's read options: `raftkv-consistency` when given, else etcd's `serializable` flag."""
    text = md.get(CONSISTENCY)
    token = _token(md.get(SESSION_TOKEN))
    if text is None:
        if token:
            return pb.ReadOptions(consistency=pb.SESSION, session_token=token)
        return pb.ReadOptions(consistency=pb.SERIALIZABLE if serializable else pb.LINEARIZABLE)
    level, opts = _options(text, CONSISTENCY)
    consistency = _READS.get(level)
    if consistency is None:
        raise _bad(f"{CONSISTENCY}: unknown level {level!r} ({', '.join(_READS)})")
    r = pb.ReadOptions(consistency=consistency, session_token=token)
    if "max_staleness_ms" in opts:
        r.max_staleness_ms = _int(CONSISTENCY, opts, "max_staleness_ms")
    if "max_lag_entries" in opts:
        r.max_lag_entries = _int(CONSISTENCY, opts, "max_lag_entries")
        r.has_max_lag_entries = True
    if "strict" in opts:
        opts.pop("strict")
        r.strict = True
    _no_more(CONSISTENCY, opts)
    return r


def _token(text: str | None) -> bytes:
    if not text:
        return b""
    try:
        token = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"{SESSION_TOKEN}: not a token from a raftkv reply") from None
    if not token:
        raise _bad(f"{SESSION_TOKEN}: not a token from a raftkv reply")
    return token


def token_text(token: bytes) -> str:
    return base64.urlsafe_b64encode(token).decode().rstrip("=")


def write_trailers(out: WriteOutcome, token: bytes, served_by: int) -> tuple[tuple[str, str], ...]:
    achieved = out.ack.level.value + (";degraded" if out.ack.degraded else "")
    if out.ack.level == AckLevel.LEADER:
        achieved += ";may_be_lost"
    return ((f"{ACK}-achieved", achieved), (SESSION_TOKEN, token_text(token)), ("raftkv-served-by", str(served_by)))


def read_trailers(point: ReadPoint, token: bytes, served_by: int) -> tuple[tuple[str, str], ...]:
    achieved = point.level.value
    if point.level.value == "bounded_staleness":
        achieved += f";staleness_bound_ms={point.staleness_bound_ms:.0f}"
    return ((f"{CONSISTENCY}-achieved", achieved), (SESSION_TOKEN, token_text(token)),
            ("raftkv-served-by", str(served_by)))
