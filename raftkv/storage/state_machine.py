"""The key-value state machine over an LMDB sub-database. Every function takes the transaction to work
in, so the node store can apply a whole batch of entries, and record the applied index, atomically."""

from __future__ import annotations

from typing import Any

import lmdb
import msgpack

from .commands import KV, Compare, Delete, DeleteResult, Put, PutResult, Range, RangeResult, Txn, TxnResult


def _decode_kv(key: bytes, raw: bytes) -> KV:
    value, create, mod, version = msgpack.unpackb(raw)
    return KV(bytes(key), value, create, mod, version)


def get(txn: lmdb.Transaction, db: Any, key: bytes) -> KV | None:
    raw = txn.get(key, db=db)
    return None if raw is None else _decode_kv(key, raw)


def _in_range(key: bytes, start: bytes, end: bytes) -> bool:
    if not end:
        return key == start
    if end == b"\0":
        return key >= start
    return start <= key < end


def range_read(txn: lmdb.Transaction, db: Any, op: Range) -> RangeResult:
    if not op.range_end:
        kv = get(txn, db, op.key)
        kvs = [kv] if kv is not None else []
        return RangeResult([] if op.count_only else kvs, len(kvs), False)
    kvs: list[KV] = []
    count = 0
    more = False
    cur = txn.cursor(db=db)
    if cur.set_range(op.key):
        for k, raw in cur:
            if not _in_range(k, op.key, op.range_end):
                break
            count += 1
            if op.count_only:
                continue
            if op.limit and len(kvs) >= op.limit:
                more = True
                continue
            kv = _decode_kv(k, raw)
            if op.keys_only:
                kv.value = b""
            kvs.append(kv)
    return RangeResult(kvs, count, more)


def _put(txn: lmdb.Transaction, db: Any, op: Put, revision: int) -> PutResult:
    prev = get(txn, db, op.key)
    if prev is None:
        rec = [op.value, revision, revision, 1]
    else:
        rec = [op.value, prev.create_revision, revision, prev.version + 1]
    txn.put(op.key, msgpack.packb(rec, use_bin_type=True), db=db)
    return PutResult(revision, prev if op.prev_kv else None)


def _delete(txn: lmdb.Transaction, db: Any, op: Delete, revision: int) -> DeleteResult:
    found = range_read(txn, db, Range(op.key, op.range_end)).kvs
    for kv in found:
        txn.delete(kv.key, db=db)
    return DeleteResult(revision, len(found), found if op.prev_kv else [])


def _compare(txn: lmdb.Transaction, db: Any, c: Compare) -> bool:
    kv = get(txn, db, c.key)
    if c.target == "exists":
        actual: Any = kv is not None
        want: Any = bool(c.operand)
        return actual == want if c.result == "=" else actual != want
    if c.target == "value":
        if kv is None:
            return c.result == "!="
        actual, want = kv.value, bytes(c.operand)
    else:
        # A missing key has version, create and mod revision 0 (as in etcd), so "version = 0" means absent.
        field_of = {"version": "version", "create": "create_revision", "mod": "mod_revision"}[c.target]
        actual, want = (getattr(kv, field_of) if kv is not None else 0), int(c.operand)
    return {"=": actual == want, "!=": actual != want, "<": actual < want, ">": actual > want}[c.result]


def _op(txn: lmdb.Transaction, db: Any, op: Put | Delete | Range, revision: int
        ) -> PutResult | DeleteResult | RangeResult:
    if isinstance(op, Put):
        return _put(txn, db, op, revision)
    if isinstance(op, Delete):
        return _delete(txn, db, op, revision)
    return range_read(txn, db, op)


def apply_command(txn: lmdb.Transaction, db: Any, cmd: Put | Delete | Txn, revision: int
                  ) -> PutResult | DeleteResult | TxnResult:
    if isinstance(cmd, Put):
        return _put(txn, db, cmd, revision)
    if isinstance(cmd, Delete):
        return _delete(txn, db, cmd, revision)
    ok = all(_compare(txn, db, c) for c in cmd.compares)
    ops = cmd.success if ok else cmd.failure
    return TxnResult(revision, ok, [_op(txn, db, o, revision) for o in ops])
