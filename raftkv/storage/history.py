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
for a delete), record body before (None if the key did not exist)], bodies as `kv` holds them.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import lmdb
import msgpack

from .commands import KV
from .errors import HistoryOutOfRange

PUT = "put"
DELETE = "delete"
FLOOR_KEY = b"history_floor"
"""The `meta` key holding the oldest revision whose events are all in the history."""
DEFAULT_KEEP_REVISIONS = 100_000
DEFAULT_KEEP_SECONDS = 3600.0
DEFAULT_KEEP_BYTES = 256 << 20
_ROW = struct.Struct(">QI")


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


def encode_row(event: Event, seq: int, now: float) -> tuple[bytes, bytes]:
    body = [now, event.kind, event.key, event.body, event.prev_body]
    return _ROW.pack(event.revision, seq), msgpack.packb(body, use_bin_type=True)


def decode_row(key: bytes, raw: bytes) -> tuple[float, Event]:
    revision, _ = _ROW.unpack(key)
    t, kind, k, body, prev = msgpack.unpackb(raw)
    return t, Event(revision, kind, k, body, prev)


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


def trim(txn: lmdb.Transaction, db: Any, below: int, older_than: float, keep_from: int,
         excess_bytes: int = 0, max_rows: int | None = None) -> tuple[int, int, bool]:
    """Delete rows with revision < `below`, then rows applied before `older_than` (unix time), and the
    oldest rows until `excess_bytes` of keys and values are gone, but never a row of revision `keep_from`
    or later (an idle cluster keeps its newest events). Whole revisions go: a revision is never cut in
    two. With `max_rows`, stop at the first revision boundary after that many rows, so that one
    transaction stays short; call again (with the bytes still in excess) for the rest.

    Returns the new floor (the lowest revision kept, or `below`), the bytes freed, and whether the trim
    is finished (False: stopped at `max_rows` with more to delete)."""
    cur = txn.cursor(db=db)
    floor = below
    freed = 0
    deleted = 0
    last_rev = -1
    if not cur.first():
        return floor, freed, True
    while True:
        k = cur.key()
        if not k:
            break
        rev = _ROW.unpack(k)[0]
        if max_rows is not None and deleted >= max_rows and rev != last_rev:
            return floor, freed, False
        if rev >= floor:  # (rev < floor: below `below`, or the rest of a revision already being deleted)
            if rev >= keep_from:
                break
            t = msgpack.unpackb(cur.value())[0]
            if t >= older_than and freed >= excess_bytes:
                break
        freed += len(k) + len(cur.value())
        floor = max(floor, rev + 1)
        deleted += 1
        last_rev = rev
        if not cur.delete():
            break
    return floor, freed, True


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
