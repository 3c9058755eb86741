"""The change history: the `history` sub-database, one row per change event, by revision.

A watch is served from it: every event with a revision at or after the watch's start, in revision
order. Rows are made by applying committed entries (an event is a key's record before and after one
command) and reach LMDB in the same synced transaction as the `kv` rows they describe (DESIGN.md §4):
`pending` holds those of the write-back buffer meanwhile, and a read merges the two. So after a crash the
node re-applies the log from its applied index and makes the same rows again, never two of one event.

The history is this node's own, not part of the replicated state: a snapshot does not carry it. A node
that installs a snapshot at index S has the history from S + 1 only; `floor` (in `meta`) is the oldest
revision whose events are all here. It rises with compaction (retention by revisions and by age, run
with the log's compaction) and with `kv compact REV` (a command through the log, so every node's floor
moves at one revision).

Row key: u64 big-endian revision + u32 big-endian position within the revision (a transaction makes
several events at one revision). Row value: msgpack [unix time applied, kind, key, record body after (None
for a delete), the record before], bodies as `kv` holds them. The record before is None if the key did
not exist, its body if it is at most `PREV_INLINE_BYTES` long, and otherwise the revision of the key's
previous event, whose row holds that body already as its record after: a big value is written into the
history once, not twice (the log entry and the `kv` record hold it too).

**Checksums.** A row is `0x01 || crc32 (4 bytes, big-endian) || msgpack`, the crc covering the row key
and the msgpack, verified on every read: a flipped byte is refused (CorruptionError naming the revision),
never served to a watcher. Rows of a raftkv-2 directory have no seal (they start with msgpack's 0x95)
and are read as they are. A damaged row that retention lets go is deleted like the others, and reported
(`Trimmed.damaged`).

**Kept rows.** So a row named by a later row's record before must outlive its own event: when retention
lets a big put's row go while a later change of its key exists (the key's `kv` record is no longer this
row's), the row stays below the floor, as that later event's record before, and goes when that later
event goes. At most one row per key is kept that way. Rows below `scan_from` (meta) are kept rows only,
so trimming starts there and never walks them again.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import lmdb
import msgpack

from .commands import KV
from .errors import CorruptionError, HistoryOutOfRange

PUT = "put"
DELETE = "delete"
FLOOR_KEY = b"history_floor"
"""The `meta` key holding the oldest revision whose events are all in the history."""
SCAN_KEY = b"history_scan_from"
"""The `meta` key holding the revision trimming starts at: every row below it is a kept row."""
PREV_INLINE_BYTES = 1024
"""A record before up to this many bytes is copied into its event's row; a longer one is named by the
revision of the row that holds it (each copy of a 64 KiB value costs its write and its fsync)."""
DEFAULT_KEEP_REVISIONS = 100_000
DEFAULT_KEEP_SECONDS = 3600.0
DEFAULT_KEEP_BYTES = 256 << 20
_ROW = struct.Struct(">QI")
_SEALED = 0x01
_CRC = struct.Struct(">I")
_SEAL_BYTES = 1 + _CRC.size


class Event:
    """One change to one key at `revision`: a put (its record after) or a delete, and the key's record
    before, if it had one. Records are kept as their msgpack bodies ([value, create_revision,
    mod_revision, version(, lease)], as the `kv` sub-database holds them) and decoded only when read:
    applying makes an event for every change, and most are never looked at but by key."""

    __slots__ = ("revision", "kind", "key", "body", "prev_body")

    def __init__(self, revision: int, kind: str, key: bytes, body: bytes | None, prev_body: bytes | None) -> None:
        self.revision = revision
        self.kind = kind
        self.key = key
        self.body = body
        self.prev_body = prev_body

    @property
    def kv(self) -> KV:
        """The record after (a delete: the key, `mod_revision` = the deleting revision)."""
        if self.body is None:
            return KV(self.key, b"", 0, self.revision, 0)
        return _decode(self.key, self.body)

    @property
    def prev(self) -> KV | None:
        return None if self.prev_body is None else _decode(self.key, self.prev_body)

    def __repr__(self) -> str:
        return f"Event({self.revision}, {self.kind}, {self.key!r})"


def _decode(key: bytes, body: bytes) -> KV:
    rec = msgpack.unpackb(body)
    return KV(key, rec[0], rec[1], rec[2], rec[3], rec[4] if len(rec) > 4 else 0)


def lease_of(body: bytes | None) -> int:
    """The lease id a record body names (0: none)."""
    if body is None:
        return 0
    rec = msgpack.unpackb(body)
    return rec[4] if len(rec) > 4 else 0


def mod_revision_of(body: bytes) -> int:
    """The revision of the change that wrote a record body."""
    return int(msgpack.unpackb(body)[2])


def _seal(key: bytes, payload: bytes) -> bytes:
    return bytes([_SEALED]) + _CRC.pack(zlib.crc32(payload, zlib.crc32(key))) + payload


def unpack_row(key: bytes, raw: bytes) -> list[Any]:
    """A row's fields [t, kind, key, body, prev], its seal checked (CorruptionError if it fails)."""
    if raw[:1] == bytes([_SEALED]):
        payload = memoryview(raw)[_SEAL_BYTES:]
        if len(raw) < _SEAL_BYTES or _CRC.unpack_from(raw, 1)[0] != zlib.crc32(payload, zlib.crc32(key)):
            raise CorruptionError(f"history: the row of revision {_ROW.unpack(key)[0]} fails its checksum "
                                  "(data corrupted on disk)")
    else:
        payload = memoryview(raw)  # a raftkv-2 row: no seal
    try:
        row = msgpack.unpackb(payload)
        if not isinstance(row, list) or len(row) != 5:
            raise ValueError("not a history row")
        return row
    except (ValueError, TypeError, msgpack.UnpackException):
        raise CorruptionError(f"history: the row of revision {_ROW.unpack(key)[0]} cannot be decoded "
                              "(data corrupted on disk)") from None


def encode_row(row_key: bytes, event: Event, now: float, floor: int) -> bytes:
    """An event's row value, sealed under its row key. Its record before is named by revision when it is long and the row holding
    it is here: that row's revision is at or above `floor`, where every event is (the caller writes this
    row in the transaction that holds that floor)."""
    prev: bytes | int | None = event.prev_body
    if prev is not None and len(prev) > PREV_INLINE_BYTES:
        at = mod_revision_of(prev)
        if at >= floor:
            prev = at
    return _seal(row_key, msgpack.packb([now, event.kind, event.key, event.body, prev], use_bin_type=True))


def decode_row(txn: lmdb.Transaction, db: Any, key: bytes, raw: bytes) -> tuple[float, Event]:
    """A row and its event, the record before read from the row it names, in the same transaction."""
    revision, _ = _ROW.unpack(key)
    t, kind, k, body, prev = unpack_row(key, raw)
    if isinstance(prev, int):
        prev = body_at(txn, db, prev, k, revision)
    return t, Event(revision, kind, k, body, prev)


def _rows_at(txn: lmdb.Transaction, db: Any, revision: int) -> Iterator[tuple[bytes, list[Any]]]:
    cur = txn.cursor(db=db)
    if not cur.set_range(row_key(revision)):
        return
    for k, v in cur:
        if _ROW.unpack(k)[0] != revision:
            return
        yield bytes(k), unpack_row(bytes(k), bytes(v))


def body_at(txn: lmdb.Transaction, db: Any, revision: int, key: bytes, named_by: int) -> bytes:
    """The record after of `key`'s event at `revision` (a later event's record before)."""
    for _, row in _rows_at(txn, db, revision):
        if row[2] == key and row[3] is not None:
            return bytes(row[3])
    raise CorruptionError(f"history: the event at revision {named_by} names the record of key {key!r} written "
                          f"at revision {revision}, and no row holds it (data damaged on disk)")


def _delete_kept(txn: lmdb.Transaction, db: Any, revision: int, key: bytes) -> int:
    """Delete `key`'s row at `revision` if it is still here (kept for a later event); the bytes freed.
    A damaged row there is left to the trim that reaches its revision (none will: it is below the scan
    point, where it stays, one row)."""
    try:
        for k, row in _rows_at(txn, db, revision):
            if row[2] == key:
                raw = txn.get(k, db=db)
                txn.delete(k, db=db)
                return len(k) + (len(raw) if raw is not None else 0)
    except CorruptionError:
        pass
    return 0


def row_key(revision: int, seq: int = 0) -> bytes:
    return _ROW.pack(revision, seq)


def read_rows(txn: lmdb.Transaction, db: Any, start: int, end: int) -> Iterator[tuple[bytes, bytes]]:
    """Rows with start <= revision <= end, in order."""
    cur = txn.cursor(db=db)
    if not cur.set_range(row_key(start)):
        return
    stop = row_key(end + 1)
    for k, v in cur:
        if k >= stop:
            return
        yield bytes(k), bytes(v)


@dataclass(slots=True)
class Trimmed:
    """What one `trim` did."""

    floor: int
    """The new floor: the lowest revision whose events are all still here."""
    freed: int
    """Bytes of keys and values deleted."""
    finished: bool
    """False: stopped at `max_rows` with more to delete."""
    scan_from: int
    """Where the next trim starts: every row below it is gone or kept."""
    damaged: list[int]
    """Revisions of rows that failed their checksum and were deleted (retention let them go)."""


def trim(txn: lmdb.Transaction, db: Any, below: int, older_than: float, keep_from: int,
         excess_bytes: int = 0, max_rows: int | None = None, scan_from: int = 0,
         superseded: Callable[[bytes, int], bool] = lambda key, revision: True) -> Trimmed:
    """Let go of rows with revision < `below`, then rows applied before `older_than` (unix time), and the
    oldest rows until `excess_bytes` of keys and values are gone, but never a row of revision `keep_from`
    or later (an idle cluster keeps its newest events). Whole revisions go: a revision is never cut in
    two. With `max_rows`, stop at the first revision boundary after that many rows, so that one
    transaction stays short; call again (with the bytes still in excess) for the rest.

    A row that goes may be the record before of its key's next event (a big put's row, when
    `superseded(key, revision)` says a later change of the key exists): it is kept, below the floor,
    and deleted when its key's next event goes."""
    cur = txn.cursor(db=db)
    floor = below
    freed = 0
    examined = 0
    last_rev = -1
    stop: int | None = None
    finished = True
    kept_to_delete: list[tuple[int, bytes]] = []
    damaged: list[int] = []
    if cur.set_range(row_key(scan_from)):
        while True:
            k = cur.key()
            if not k:
                break
            rev = _ROW.unpack(k)[0]
            if max_rows is not None and examined >= max_rows and rev != last_rev:
                stop, finished = rev, False
                break
            raw = cur.value()
            try:
                t, _kind, key, body, prev = unpack_row(k, raw)
            except CorruptionError:
                # Its time unknown: it goes only below `below` (retention by revisions), never early.
                t, key, body, prev = float("inf"), b"", None, None
                damaged.append(rev)
            if rev >= floor:  # (rev < floor: below `below`, or the rest of a revision already going)
                if rev >= keep_from or (t >= older_than and freed >= excess_bytes):
                    stop = rev
                    break
            # This event's record before is no longer needed: if its row was kept for it, it goes too.
            if isinstance(prev, int):
                kept_to_delete.append((prev, key))
            elif prev is not None and len(prev) > PREV_INLINE_BYTES:
                kept_to_delete.append((mod_revision_of(prev), key))
            floor = max(floor, rev + 1)
            examined += 1
            last_rev = rev
            if body is not None and len(body) > PREV_INLINE_BYTES and superseded(key, rev):
                if not cur.next():
                    break
                continue
            freed += len(k) + len(raw)
            if not cur.delete():
                break
    for revision, key in kept_to_delete:
        freed += _delete_kept(txn, db, revision, key)
    if stop is not None and damaged and damaged[-1] >= stop:
        damaged.pop()  # the row where the trim stopped is still here
    return Trimmed(floor, freed, finished, max(scan_from, floor if stop is None else stop), damaged)


@dataclass(slots=True)
class Retention:
    """How much history a node keeps: at most `revisions` revisions back from its applied index, no row
    older than `seconds`, at most about `max_bytes` (all enforced when the log is compacted)."""

    revisions: int = DEFAULT_KEEP_REVISIONS
    seconds: float = DEFAULT_KEEP_SECONDS
    max_bytes: int = DEFAULT_KEEP_BYTES
    """And at most about this many bytes (LMDB pages of the `history` sub-database): values are kept in
    events, so big values would otherwise fill the disk long before the revision bound."""

    def bounds(self, applied: int, now: float | None = None) -> tuple[int, float]:
        """(revision below which every row goes, unix time before which rows go)."""
        return max(0, applied - self.revisions + 1), (time.time() if now is None else now) - self.seconds


__all__ = ["DELETE", "PUT", "Event", "HistoryOutOfRange", "Retention"]
