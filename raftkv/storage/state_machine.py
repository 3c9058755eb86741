"""The key-value state machine. Commands are applied to a `KVView`: the LMDB write transaction that also
records the applied index (so a batch of entries and its index land atomically), or a `PlannedChanges`
that computes what a batch will write, and its results, before any transaction is open (so the write
itself can be handed to another thread)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import lmdb
import msgpack

from .commands import KV, Compare, Delete, DeleteResult, Put, PutResult, Range, RangeResult, Txn, TxnResult


class KVView(Protocol):
    """Raw records (msgpack [value, create_revision, mod_revision, version]) by key."""

    def get(self, key: bytes) -> bytes | None: ...

    def put(self, key: bytes, raw: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def scan(self, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Keys >= start, in order."""
        ...


class TxnView:
    """The `kv` sub-database as an LMDB transaction sees it (read-only or write)."""

    __slots__ = ("txn", "db")

    def __init__(self, txn: lmdb.Transaction, db: Any) -> None:
        self.txn = txn
        self.db = db

    def get(self, key: bytes) -> bytes | None:
        return self.txn.get(key, db=self.db)

    def put(self, key: bytes, raw: bytes) -> None:
        self.txn.put(key, raw, db=self.db)

    def delete(self, key: bytes) -> None:
        self.txn.delete(key, db=self.db)

    def scan(self, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        cur = self.txn.cursor(db=self.db)
        if cur.set_range(start):
            yield from cur


class NeedsTransaction(Exception):
    """The command reads a key range, which `PlannedChanges` does not merge with its pending changes."""


class PlannedChanges:
    """Pending changes over a read transaction: reads see the changes made so far, writes are kept, in
    `changes`, as each key's final record (None: deleted). Range scans are not offered."""

    __slots__ = ("base", "changes")

    def __init__(self, base: TxnView) -> None:
        self.base = base
        self.changes: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        if key in self.changes:
            return self.changes[key]
        return self.base.get(key)

    def put(self, key: bytes, raw: bytes) -> None:
        self.changes[key] = raw

    def delete(self, key: bytes) -> None:
        self.changes[key] = None

    def scan(self, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        raise NeedsTransaction()


def _decode_kv(key: bytes, raw: bytes) -> KV:
    value, create, mod, version = msgpack.unpackb(raw)
    return KV(bytes(key), value, create, mod, version)


def get(view: KVView, key: bytes) -> KV | None:
    raw = view.get(key)
    return None if raw is None else _decode_kv(key, raw)


def _in_range(key: bytes, start: bytes, end: bytes) -> bool:
    if not end:
        return key == start
    if end == b"\0":
        return key >= start
    return start <= key < end


KV_OVERHEAD = 32
"""What one key-value adds to an answer besides its key and value (revisions, version, framing)."""


def range_read(view: KVView, op: Range, limit_bytes: int = 0) -> RangeResult:
    """The keys of `op`, at most `op.limit` of them and, with `limit_bytes`, no more key and value bytes
    than that (but always at least one key); `more` when others match. `count` counts every match."""
    if not op.range_end:
        kv = get(view, op.key)
        kvs = [kv] if kv is not None else []
        return RangeResult([] if op.count_only else kvs, len(kvs), False)
    kvs: list[KV] = []
    count = 0
    more = False
    size = 0
    for k, raw in view.scan(op.key):
        if not _in_range(k, op.key, op.range_end):
            break
        count += 1
        if op.count_only or more:
            continue
        if op.limit and len(kvs) >= op.limit:
            more = True
            continue
        if limit_bytes:
            size += len(k) + KV_OVERHEAD + (0 if op.keys_only else len(raw))
            if size > limit_bytes and kvs:
                more = True
                continue
        kv = _decode_kv(k, raw)
        if op.keys_only:
            kv.value = b""
        kvs.append(kv)
    return RangeResult(kvs, count, more)


def _put(view: KVView, op: Put, revision: int) -> PutResult:
    prev = get(view, op.key)
    if prev is None:
        rec = [op.value, revision, revision, 1]
    else:
        rec = [op.value, prev.create_revision, revision, prev.version + 1]
    view.put(op.key, msgpack.packb(rec, use_bin_type=True))
    return PutResult(revision, prev if op.prev_kv else None)


def _delete(view: KVView, op: Delete, revision: int) -> DeleteResult:
    found = range_read(view, Range(op.key, op.range_end)).kvs
    for kv in found:
        view.delete(kv.key)
    return DeleteResult(revision, len(found), found if op.prev_kv else [])


def _compare(view: KVView, c: Compare) -> bool:
    kv = get(view, c.key)
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


def _op(view: KVView, op: Put | Delete | Range, revision: int) -> PutResult | DeleteResult | RangeResult:
    if isinstance(op, Put):
        return _put(view, op, revision)
    if isinstance(op, Delete):
        return _delete(view, op, revision)
    return range_read(view, op)


def apply_command(view: KVView, cmd: Put | Delete | Txn, revision: int
                  ) -> PutResult | DeleteResult | TxnResult:
    if isinstance(cmd, Put):
        return _put(view, cmd, revision)
    if isinstance(cmd, Delete):
        return _delete(view, cmd, revision)
    ok = all(_compare(view, c) for c in cmd.compares)
    ops = cmd.success if ok else cmd.failure
    return TxnResult(revision, ok, [_op(view, o, revision) for o in ops])
