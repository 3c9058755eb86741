"""The key-value state machine. Commands are applied to a `KVView`: the write-back buffer over the `kv`
sub-database (write_back.Overlay), which reaches LMDB later beside its applied index; `TxnView` is that
sub-database as an LMDB transaction sees it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import lmdb
import msgpack

from . import kv_records, sessions
from .commands import KV, Compare, Delete, DeleteResult, Put, PutResult, Range, RangeResult, Txn, TxnResult
from .kv_records import BUCKET_THRESHOLD
from .leases import LeaseNotFound


class KVView(Protocol):
    """Record bodies (msgpack [value, create_revision, mod_revision, version]) by full key. A view seals
    what it stores and verifies what it reads (see kv_records.py)."""

    def get(self, key: bytes) -> bytes | None: ...

    def put(self, key: bytes, body: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def scan(self, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Keys >= start, in order."""
        ...


def _storable(key: bytes) -> None:
    # Checked before anything is written, so that a command storing it fails alone (LMDB refuses empty keys).
    if not key:
        raise ValueError("an empty key cannot be stored")


class TxnView:
    """The `kv` sub-database as an LMDB transaction sees it (read-only or write), in the layout of
    kv_records.py: keys shorter than `threshold` as themselves, longer ones in buckets. `where` names
    the node and file in a corruption report."""

    __slots__ = ("txn", "db", "where", "threshold")

    def __init__(self, txn: lmdb.Transaction, db: Any, where: str = "", threshold: int = BUCKET_THRESHOLD) -> None:
        self.txn = txn
        self.db = db
        self.where = where or "kv"
        self.threshold = threshold

    def _bucket(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        raw = self.txn.get(prefix, db=self.db)
        return [] if raw is None else kv_records.open_bucket(prefix, raw, self.where)

    def get(self, key: bytes) -> bytes | None:
        rec = self.get_record(key)
        return None if rec is None else kv_records.unseal(key, rec, self.where)

    def get_record(self, key: bytes) -> bytes | None:
        """The sealed record of `key` (its bucket checked, the record itself not yet)."""
        if len(key) < self.threshold:
            return self.txn.get(key, db=self.db) if key else None  # LMDB holds no empty key
        for k, rec in self._bucket(key[: self.threshold]):
            if k == key:
                return rec
        return None

    def put(self, key: bytes, body: bytes) -> None:
        self.put_record(key, kv_records.seal(key, body))

    def put_record(self, key: bytes, record: bytes | None) -> None:
        """Store a sealed record under `key` (None: delete it)."""
        if len(key) < self.threshold:
            if record is None:
                self.txn.delete(key, db=self.db)
            else:
                _storable(key)
                self.txn.put(key, record, db=self.db)
            return
        prefix = key[: self.threshold]
        pairs = kv_records.bucket_set(self._bucket(prefix), key, record)
        if pairs:
            self.txn.put(prefix, kv_records.close_bucket(prefix, pairs), db=self.db)
        else:
            self.txn.delete(prefix, db=self.db)

    def delete(self, key: bytes) -> None:
        self.put_record(key, None)

    def load_sorted(self, records: list[tuple[bytes, bytes]]) -> None:
        """Store (key, sealed record) pairs sorted by key into an empty sub-database (a snapshot being
        installed): each bucket written once."""
        t = self.threshold
        i = 0
        while i < len(records):
            k, rec = records[i]
            if len(k) < t:
                _storable(k)
                self.txn.put(k, rec, db=self.db)
                i += 1
                continue
            prefix = k[:t]
            j = i
            while j < len(records) and len(records[j][0]) >= t and records[j][0][:t] == prefix:
                j += 1
            self.txn.put(prefix, kv_records.close_bucket(prefix, sorted(records[i:j])), db=self.db)
            i = j

    def records(self, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """(full key, sealed record) for keys >= start, in order; buckets checked, records not yet."""
        t = self.threshold
        cur = self.txn.cursor(db=self.db)
        if not cur.set_range(start[:t]):
            return
        for k, v in cur:
            if len(k) < t:
                if k >= start:
                    yield k, v
                continue
            for fk, rec in kv_records.open_bucket(k, v, self.where):
                if fk >= start:
                    yield fk, rec

    def scan(self, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        for k, rec in self.records(start):
            yield k, kv_records.unseal(k, rec, self.where)


def _decode_kv(key: bytes, raw: bytes) -> KV:
    rec = msgpack.unpackb(raw)
    # [value, create, mod, version] and, for a key attached to a lease, its lease id.
    return KV(bytes(key), rec[0], rec[1], rec[2], rec[3], rec[4] if len(rec) > 4 else 0)


def decode_record(key: bytes, raw: bytes) -> KV:
    """A record body (as a KVView holds it) as a KV."""
    return _decode_kv(key, raw)


LeaseCheck = Callable[[int], bool]
"""Whether a lease id exists, as of the command being applied."""


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
        if sessions.reserved(k):  # client sessions' records: never a client's key
            continue
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


def _put(view: KVView, op: Put, revision: int, leases: LeaseCheck | None = None) -> PutResult:
    if op.lease and (leases is None or not leases(op.lease)):
        raise LeaseNotFound(op.lease)
    prev = get(view, op.key)
    if prev is None:
        rec = [op.value, revision, revision, 1]
    else:
        rec = [op.value, prev.create_revision, revision, prev.version + 1]
    if op.lease:
        rec.append(op.lease)
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
        # A missing key has version, create and mod revision 0 (as in etcd), so "version = 0" means absent;
        # its lease is 0 too, as a key's without one.
        field_of = {"version": "version", "create": "create_revision", "mod": "mod_revision",
                    "lease": "lease"}[c.target]
        actual, want = (getattr(kv, field_of) if kv is not None else 0), int(c.operand)
    return {"=": actual == want, "!=": actual != want, "<": actual < want, ">": actual > want}[c.result]


def _op(view: KVView, op: Put | Delete | Range | Txn, revision: int, path: Iterator[bool], leases: LeaseCheck | None
        ) -> PutResult | DeleteResult | RangeResult | TxnResult:
    if isinstance(op, Txn):
        return _apply_txn(view, op, revision, path, leases)
    if isinstance(op, Put):
        return _put(view, op, revision, leases)
    if isinstance(op, Delete):
        return _delete(view, op, revision)
    return range_read(view, op)


def apply_command(view: KVView, cmd: Put | Delete | Txn | sessions.SessionCommand, revision: int,
                  leases: LeaseCheck | None = None) -> Any:
    """`leases`: which lease ids exist (a put naming another fails alone); None: no lease exists."""
    if isinstance(cmd, Put):
        return _put(view, cmd, revision, leases)
    if isinstance(cmd, Delete):
        return _delete(view, cmd, revision)
    if isinstance(cmd, sessions.SessionCommand):  # a client session's command (sessions.py)
        return sessions.apply(view, cmd, revision, lambda v, c, i: apply_command(v, c, i, leases))
    return _apply_txn(view, cmd, revision, iter(_path(view, cmd)), leases)


def _path(view: KVView, txn: Txn) -> list[bool]:
    """The outcome of every compare list on the chosen path, in order, before anything applies (etcd's
    compareToPath): a nested transaction's compares see the state its parent's compares saw."""
    ok = all(_compare(view, c) for c in txn.compares)
    path = [ok]
    for op in txn.success if ok else txn.failure:
        if isinstance(op, Txn):
            path += _path(view, op)
    return path


def _apply_txn(view: KVView, txn: Txn, revision: int, path: Iterator[bool], leases: LeaseCheck | None
               ) -> TxnResult:
    ok = next(path)
    ops = txn.success if ok else txn.failure
    return TxnResult(revision, ok, [_op(view, o, revision, path, leases) for o in ops])
