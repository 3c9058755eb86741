"""Protobuf requests -> validated commands and options; results -> protobuf replies."""

from __future__ import annotations

import grpc
from google.protobuf.message import Message

from ..layers.acks import AckLevel, AckRequest
from ..layers.reads import ReadLevel, StalenessBound
from ..proto.stubs import kv_pb2 as pb
from ..server.config import ServerConfig
from ..storage.commands import (
    KV,
    SESSION_PREFIX,
    Compare,
    Delete,
    DeleteResult,
    Put,
    PutResult,
    Range,
    RangeResult,
    Txn,
    reserved_key,
)
from .errors import RequestError, invalid

ACK_FROM_PB = {pb.ACK_DEFAULT: AckLevel.MAJORITY, pb.ACK_LEADER: AckLevel.LEADER, pb.ACK_MAJORITY: AckLevel.MAJORITY,
               pb.ACK_SEMI_SYNC: AckLevel.SEMI_SYNC, pb.ACK_SYNC: AckLevel.SYNC}
ACK_TO_PB = {AckLevel.LEADER: pb.ACK_LEADER, AckLevel.MAJORITY: pb.ACK_MAJORITY, AckLevel.SEMI_SYNC: pb.ACK_SEMI_SYNC,
             AckLevel.SYNC: pb.ACK_SYNC}
READ_FROM_PB = {pb.CONSISTENCY_DEFAULT: ReadLevel.LINEARIZABLE, pb.LINEARIZABLE: ReadLevel.LINEARIZABLE,
                pb.LEASE: ReadLevel.LEASE, pb.SERIALIZABLE: ReadLevel.SERIALIZABLE,
                pb.BOUNDED_STALENESS: ReadLevel.BOUNDED_STALENESS, pb.SESSION: ReadLevel.SESSION}
READ_TO_PB = {v: k for k, v in READ_FROM_PB.items() if k != pb.CONSISTENCY_DEFAULT}
TARGETS = {pb.Compare.VALUE: "value", pb.Compare.VERSION: "version", pb.Compare.CREATE: "create",
           pb.Compare.MOD: "mod", pb.Compare.EXISTS: "exists"}
RESULTS = {pb.Compare.EQUAL: "=", pb.Compare.NOT_EQUAL: "!=", pb.Compare.LESS: "<", pb.Compare.GREATER: ">"}


class Validator:
    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg

    def request_size(self, r: Message, what: str = "request") -> None:
        """Refuse a write request over --max-request-bytes before it is proposed: one big entry makes every
        follower receive, fsync and apply it, and a leader that stalls on it loses its lease (etcd's
        "request is too large")."""
        size = r.ByteSize()
        limit = self.cfg.max_request_bytes
        if size > limit:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"{what} is too large: {size} bytes; the limit is {limit} bytes (--max-request-bytes)",
                               "REQUEST_TOO_LARGE", {"size": str(size), "limit": str(limit)})

    def batch_write_size(self, r: Message, what: str, before: int) -> int:
        """One write of a Batch: refused alone if it is over the limit, or if the batch's writes up to
        and including it are. Returns the new total."""
        self.request_size(r, what)
        total = before + r.ByteSize()
        limit = self.cfg.max_request_bytes
        if total > limit:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"batch's writes are too large: {total} bytes up to this one; the limit is {limit} "
                               "bytes (--max-request-bytes): send the rest in another batch",
                               "REQUEST_TOO_LARGE", {"size": str(total), "limit": str(limit)})
        return total

    def key(self, key: bytes, what: str = "key") -> bytes:
        if not key:
            raise invalid(f"{what} must not be empty")
        if len(key) > self.cfg.max_key_bytes:
            raise invalid(f"{what} is {len(key)} bytes; the limit is {self.cfg.max_key_bytes}")
        if reserved_key(key):
            raise invalid(f"{what} starts with {SESSION_PREFIX!r}: that range holds client sessions")
        return key

    def value(self, value: bytes) -> bytes:
        if len(value) > self.cfg.max_value_bytes:
            raise invalid(f"value is {len(value)} bytes; the limit is {self.cfg.max_value_bytes}")
        return value

    def range_end(self, end: bytes) -> bytes:
        if len(end) > self.cfg.max_key_bytes:
            raise invalid(f"range_end is {len(end)} bytes; the limit is {self.cfg.max_key_bytes}")
        return end

    def put(self, r: pb.PutRequest) -> Put:
        if r.lease < 0:
            raise invalid(f"lease must not be negative, not {r.lease}")
        return Put(self.key(r.key), self.value(r.value), r.prev_kv, r.lease)

    def delete(self, r: pb.DeleteRequest) -> Delete:
        return Delete(self.key(r.key), self.range_end(r.range_end), r.prev_kv)

    def range(self, r: pb.RangeRequest) -> Range:
        if not r.key and r.range_end != b"\0":
            raise invalid("key must not be empty (use range_end \\0 with an empty key to read everything)")
        # The server's key-count bound is the limit whenever the client asks for more (or for no limit);
        # the byte bound is applied by the scan (`range_read`), which always returns at least one key.
        limit = min(r.limit, self.cfg.max_range_keys) if r.limit else self.cfg.max_range_keys
        return Range(r.key, self.range_end(r.range_end), limit, r.keys_only, r.count_only)

    def txn(self, r: pb.TxnRequest) -> Txn:
        ops = len(r.success) + len(r.failure) + len(r.compare)
        if ops > self.cfg.max_txn_ops:
            raise invalid(f"transaction has {ops} compares and operations; the limit is {self.cfg.max_txn_ops}")
        compares = []
        for c in r.compare:
            target = TARGETS.get(c.target)
            result = RESULTS.get(c.result)
            if target is None or result is None:
                raise invalid("unknown compare target or result")
            operand = self._operand(c, target, result)
            compares.append(Compare(self.key(c.key, "compare key"), target, result, operand))
        return Txn(tuple(compares), tuple(self._op(o) for o in r.success), tuple(self._op(o) for o in r.failure))

    @staticmethod
    def _operand(c: pb.Compare, target: str, result: str) -> object:
        """The operand the target takes, refusing one that does not fit (it would be silently ignored):
        VALUE compares `value` (bytes); VERSION, CREATE and MOD compare a `number` >= 0; EXISTS takes
        `number` 1 (exists) or 0 (absent) with = or != only."""
        key = c.key.decode("utf-8", "backslashreplace")
        if target == "value":
            if c.number:
                raise invalid(f"compare of value({key}) takes `value` (bytes), not `number` {c.number}")
            return c.value
        if c.value:
            raise invalid(f"compare of {target}({key}) takes `number`, not `value` {c.value[:32]!r}")
        if target == "exists":
            if c.number not in (0, 1):
                raise invalid(f"compare of exists({key}) takes number 1 (exists) or 0 (absent), not {c.number}")
            if result not in ("=", "!="):
                raise invalid(f"compare of exists({key}) takes = or !=, not {result}")
            return bool(c.number)
        if c.number < 0:
            raise invalid(f"compare of {target}({key}) takes a number >= 0, not {c.number}")
        return c.number

    def _op(self, o: pb.RequestOp) -> Put | Delete | Range:
        kind = o.WhichOneof("request")
        if kind == "put":
            return self.put(o.put)
        if kind == "delete":
            return self.delete(o.delete)
        if kind == "range":
            return self.range(o.range)
        raise invalid("a transaction operation must be put, delete or range")

    def ack(self, w: pb.WriteOptions) -> AckRequest:
        level = AckLevel(self.cfg.default_ack) if w.ack == pb.ACK_DEFAULT else ACK_FROM_PB.get(w.ack)
        if level is None:
            raise invalid(f"unknown ack level {w.ack}")
        if level == AckLevel.SYNC:
            timeout = w.timeout_ms or self.cfg.sync_timeout_ms
        else:
            timeout = w.timeout_ms or self.cfg.semi_sync_timeout_ms
        return AckRequest(level, w.min_replicas or self.cfg.semi_sync_min_replicas, timeout)

    def read(self, r: pb.ReadOptions) -> tuple[ReadLevel, StalenessBound | None]:
        level = READ_FROM_PB.get(r.consistency)
        if level is None:
            raise invalid(f"unknown consistency level {r.consistency}")
        if level != ReadLevel.BOUNDED_STALENESS:
            if level == ReadLevel.SESSION and not r.session_token:
                raise invalid("session consistency needs a session_token from an earlier reply")
            return level, None
        bound = StalenessBound(r.max_staleness_ms or None, r.max_lag_entries if r.has_max_lag_entries else None,
                               r.strict)
        try:
            bound.validate()
        except ValueError as e:
            raise invalid(str(e)) from None
        return level, bound


def kv_to_pb(kv: KV) -> pb.KeyValue:
    return pb.KeyValue(key=kv.key, value=kv.value, create_revision=kv.create_revision, mod_revision=kv.mod_revision,
                       version=kv.version, lease=kv.lease)


def range_to_pb(r: RangeResult) -> pb.RangeResponse:
    """With `more`, `next_key` is where the next page starts: the last key returned + "\\0" (etcd's way)."""
    next_key = r.kvs[-1].key + b"\0" if r.more and r.kvs else b""
    return pb.RangeResponse(kvs=[kv_to_pb(kv) for kv in r.kvs], count=r.count, more=r.more, next_key=next_key)


def put_to_pb(r: PutResult | None) -> pb.PutResponse:
    out = pb.PutResponse()
    if r is not None and r.prev is not None:
        out.prev_kv.CopyFrom(kv_to_pb(r.prev))
        out.has_prev_kv = True
    return out


def delete_to_pb(r: DeleteResult | None) -> pb.DeleteResponse:
    if r is None:
        return pb.DeleteResponse()
    return pb.DeleteResponse(deleted=r.deleted, prev_kvs=[kv_to_pb(kv) for kv in r.prev])


def op_result_to_pb(r: PutResult | DeleteResult | RangeResult) -> pb.ResponseOp:
    if isinstance(r, PutResult):
        return pb.ResponseOp(put=put_to_pb(r))
    if isinstance(r, DeleteResult):
        return pb.ResponseOp(delete=delete_to_pb(r))
    return pb.ResponseOp(range=range_to_pb(r))
