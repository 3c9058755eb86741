"""Building requests from plain Python arguments (shared by both clients)."""

from __future__ import annotations

from ..proto.stubs import kv_pb2 as pb

ACKS = {"default": pb.ACK_DEFAULT, "leader": pb.ACK_LEADER, "async": pb.ACK_LEADER, "majority": pb.ACK_MAJORITY,
        "semi_sync": pb.ACK_SEMI_SYNC, "semi-sync": pb.ACK_SEMI_SYNC, "sync": pb.ACK_SYNC}
CONSISTENCY = {"default": pb.CONSISTENCY_DEFAULT, "linearizable": pb.LINEARIZABLE, "lease": pb.LEASE,
               "serializable": pb.SERIALIZABLE, "eventual": pb.SERIALIZABLE,
               "bounded_staleness": pb.BOUNDED_STALENESS, "bounded-staleness": pb.BOUNDED_STALENESS,
               "session": pb.SESSION}


def _b(x: bytes | str) -> bytes:
    return x.encode() if isinstance(x, str) else x


def write_options(ack: str = "default", min_replicas: int = 0, timeout_ms: int = 0) -> pb.WriteOptions:
    if ack not in ACKS:
        raise ValueError(f"unknown ack level {ack!r}; choose from {', '.join(sorted(ACKS))}")
    return pb.WriteOptions(ack=ACKS[ack], min_replicas=min_replicas, timeout_ms=timeout_ms)


def read_options(consistency: str = "default", max_staleness_ms: int | None = None,
                 max_lag_entries: int | None = None, strict: bool = False, session_token: bytes = b"") -> pb.ReadOptions:
    if consistency not in CONSISTENCY:
        raise ValueError(f"unknown consistency {consistency!r}; choose from {', '.join(sorted(CONSISTENCY))}")
    return pb.ReadOptions(consistency=CONSISTENCY[consistency], max_staleness_ms=max_staleness_ms or 0,
                          max_lag_entries=max_lag_entries or 0, has_max_lag_entries=max_lag_entries is not None,
                          strict=strict, session_token=session_token)


def prefix_end(prefix: bytes) -> bytes:
    from ..storage.commands import prefix_end as pe

    return pe(prefix)


def compare(key: bytes | str, target: str, op: str, operand: object) -> pb.Compare:
    targets = {"value": pb.Compare.VALUE, "version": pb.Compare.VERSION, "create": pb.Compare.CREATE,
               "mod": pb.Compare.MOD, "exists": pb.Compare.EXISTS}
    results = {"=": pb.Compare.EQUAL, "==": pb.Compare.EQUAL, "!=": pb.Compare.NOT_EQUAL, "<": pb.Compare.LESS,
               ">": pb.Compare.GREATER}
    if target not in targets or op not in results:
        raise ValueError(f"bad compare {target} {op}")
    c = pb.Compare(key=_b(key), target=targets[target], result=results[op])
    if target == "value":
        c.value = _b(operand)  # type: ignore[arg-type]
    else:
        c.number = int(operand)  # type: ignore[call-overload]
    return c


def op_put(key: bytes | str, value: bytes | str) -> pb.RequestOp:
    return pb.RequestOp(put=pb.PutRequest(key=_b(key), value=_b(value)))


def op_delete(key: bytes | str) -> pb.RequestOp:
    return pb.RequestOp(delete=pb.DeleteRequest(key=_b(key)))


def op_get(key: bytes | str) -> pb.RequestOp:
    return pb.RequestOp(range=pb.RangeRequest(key=_b(key)))
