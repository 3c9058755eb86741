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
several events at one revision). Row value: msgpack [unix time applied, kind, key, value, create_revision,
mod_revision, version, lease, prev or None], prev as [value, create, mod, version, lease].
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


@dataclass(slots=True)
class Event:
    """One change to one key at `revision`: its record after (a put) or the key alone (a delete,
    `kv.mod_revision` = the deleting revision), and its record before, if it had one."""

    revision: int
    kind: str
    kv: KV
    prev: KV | None = None


def _kv_wire(kv: KV) -> list[Any]:
    return [kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease]


def encode_row(event: Event, seq: int, now: float) -> tuple[bytes, bytes]:
    kv = event.kv
    prev = None if event.prev is None else _kv_wire(event.prev)
    body = [now, event.kind, kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease, prev]
    return _ROW.pack(event.revision, seq), msgpack.packb(body, use_bin_type=True)


def decode_row(key: bytes, raw: bytes) -> tuple[float, Event]:
    revision, _ = _ROW.unpack(key)
    t, kind, k, value, create, mod, version, lease, prev = msgpack.unpackb(raw)
    p = None if prev is None else KV(k, prev[0], prev[1], prev[2], prev[3], prev[4])
    return t, Event(revision, kind, KV(k, value, create, mod, version, lease), p)


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
         excess_bytes: int = 0) -> int:
    """Delete rows with revision < `below`, then rows applied before `older_than` (unix time), and the
    oldest rows until `excess_bytes` of keys and values are gone, but never a row of revision `keep_from`
    or later (an idle cluster keeps its newest events). Returns the new floor: the lowest revision kept
    (or `below`). Whole revisions go: a revision is never cut in two."""
    cur = txn.cursor(db=db)
    floor = below
    freed = 0
    if not cur.first():
        return floor
    while True:
        k = cur.key()
        if not k:
            break
        rev = _ROW.unpack(k)[0]
        if rev >= below and rev >= floor:  # (rev < floor: the rest of a revision already being deleted)
            if rev >= keep_from:
                break
            t = msgpack.unpackb(cur.value())[0]
            if t >= older_than and freed >= excess_bytes:
                break
        freed += len(k) + len(cur.value())
        floor = max(floor, rev + 1)
        if not cur.delete():
            break
    return floor


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
