"""HistoryRows: the change history as a node's LMDB store keeps it (the row format is history.py's).

It holds what the store needs between transactions: the events applied into the write-back buffer and
not yet written (`pending`), the floor, where trimming starts (`scan_from`, see history.py's kept rows),
and the retention under way. The store calls it inside its own transactions, under its own lock, so the
floor a row is encoded against (`write`) is the floor of the transaction that writes it, and a
compaction step never lets go of a row that a row written in the same instant names.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lmdb

from . import history
from .data_dir import pages_bytes
from .history import Event, HistoryOutOfRange, Retention

_U64 = struct.Struct(">Q")


@dataclass(slots=True)
class _Trim:
    """What a compaction's retention lets go (history.trim's bounds), and the bytes still in excess after
    the steps so far."""

    below: int
    older_than: float
    keep_from: int
    excess: int


class HistoryRows:
    """The `history` sub-database and the `meta` keys of its floor and scan point."""

    def __init__(self, db: Any, meta_db: Any) -> None:
        self.db = db
        self.meta_db = meta_db
        self.retention = Retention()
        self.pending: list[tuple[bytes, float, Event]] = []
        """(row key, unix time applied, event) of the write-back buffer's entries, written beside it."""
        self.floor = 0
        """The oldest revision whose events are all here (or in `pending`)."""
        self._floor_dirty = False  # moved by `kv compact`: written with the next buffer
        self._scan_from = 0
        self._trim: _Trim | None = None
        self._next = (0, 0)  # (floor, scan point) of the step whose transaction is committing
        self.damaged: list[int] = []
        """Revisions of damaged rows that retention deleted, for the host to report (`take_damaged`)."""

    # --- opening, writing, snapshots -----------------------------------------------------------
    def load(self, txn: lmdb.Transaction, durable_applied: int) -> None:
        """Read the floor and scan point (a directory from before the history existed has no history
        before its applied index)."""
        raw = txn.get(history.FLOOR_KEY, db=self.meta_db)
        if raw is None:
            self.floor = durable_applied + 1
            txn.put(history.FLOOR_KEY, _U64.pack(self.floor), db=self.meta_db)
        else:
            self.floor = _U64.unpack(raw)[0]
        raw = txn.get(history.SCAN_KEY, db=self.meta_db)
        self._scan_from = 0 if raw is None else _U64.unpack(raw)[0]

    def record(self, events: list[Event]) -> None:
        """Events just applied into the write-back buffer."""
        if not events:
            return
        now = time.time()
        seq = 0
        last = -1
        for ev in events:
            seq = seq + 1 if ev.revision == last else 0
            last = ev.revision
            self.pending.append((history.row_key(ev.revision, seq), now, ev))

    def write(self, txn: lmdb.Transaction) -> None:
        """The pending rows (and a moved floor), in the buffer's transaction. Encoded here, against this
        transaction's floor: a record before is named by revision only if its row is here."""
        if self.pending:
            floor = self.floor
            rows = [(k, history.encode_row(k, ev, t, floor)) for k, t, ev in self.pending]
            txn.cursor(db=self.db).putmulti(rows)
        if self._floor_dirty:
            txn.put(history.FLOOR_KEY, _U64.pack(self.floor), db=self.meta_db)

    def written(self) -> None:
        """The buffer's transaction committed."""
        self.pending = []
        self._floor_dirty = False

    def clear(self, txn: lmdb.Transaction, index: int) -> None:
        """A snapshot at `index` installed in `txn`: the history before it is not here (nor are the events
        it skips), so it starts after it. Call `cleared(index)` once `txn` committed."""
        txn.drop(self.db, delete=False)
        txn.put(history.FLOOR_KEY, _U64.pack(index + 1), db=self.meta_db)
        txn.delete(history.SCAN_KEY, db=self.meta_db)

    def cleared(self, index: int) -> None:
        self.floor = index + 1
        self._scan_from = 0
        self._trim = None

    def compact_to(self, revision: int, index: int) -> int:
        """`kv compact REV` applied: the floor moves to REV (at most this entry's index); the rows below
        it go with the next compaction (reads refuse them from now on). Returns the floor."""
        target = min(revision, index)
        if target > self.floor:
            self.floor = target
            self._floor_dirty = True
        return self.floor

    # --- retention ------------------------------------------------------------------------------
    def start_trim(self, txn: lmdb.Transaction, applied: int) -> None:
        """What retention lets go as of `applied` (the applied index LMDB holds): deleted by `trim_step`."""
        below, older_than = self.retention.bounds(applied)
        excess = max(0, pages_bytes(txn.stat(self.db)) - self.retention.max_bytes)
        self._trim = _Trim(below, older_than, applied, excess)

    def trim_step(self, txn: lmdb.Transaction, max_rows: int,
                  superseded: Callable[[bytes, int], bool]) -> bool:
        """Let go of up to about `max_rows` rows in `txn`; `superseded(key, revision)`: whether a later
        change of `key` than `revision` is in LMDB. Returns whether it finished; call `trimmed` with that
        once `txn` committed."""
        trim = self._trim
        if trim is None:
            return True
        done = history.trim(txn, self.db, max(trim.below, self.floor), trim.older_than, trim.keep_from,
                            trim.excess, max_rows, self._scan_from, superseded)
        trim.excess = max(0, trim.excess - done.freed)
        floor = max(self.floor, done.floor)
        if floor > self.floor:
            txn.put(history.FLOOR_KEY, _U64.pack(floor), db=self.meta_db)
        scan_from = max(self._scan_from, done.scan_from)
        if scan_from != self._scan_from:
            txn.put(history.SCAN_KEY, _U64.pack(scan_from), db=self.meta_db)
        self._next = (floor, scan_from)
        self.damaged.extend(done.damaged)
        return done.finished

    def trimmed(self, finished: bool) -> None:
        self.floor, self._scan_from = self._next
        if finished:
            self._trim = None

    def take_damaged(self) -> list[int]:
        out, self.damaged = self.damaged, []
        return out

    def trimming(self) -> bool:
        return self._trim is not None

    # --- reads ------------------------------------------------------------------------------------
    def events(self, env: lmdb.Environment, start: int, end: int, limit: int = 1000) -> list[Event]:
        """Events with start <= revision <= end, in order, at most about `limit` (never a revision cut
        in two); raises HistoryOutOfRange when `start` is below the floor. Safe on any thread: the
        pending rows are taken before the LMDB transaction, so the two together miss nothing."""
        pending = list(self.pending)
        floor = self.floor
        if start < floor:
            raise HistoryOutOfRange(start, floor)
        found: dict[bytes, Event] = {}
        hi = history.row_key(end + 1)
        last = b""
        with env.begin() as txn:
            for k, v in history.read_rows(txn, self.db, start, end):
                if len(found) >= limit and k[:8] != last[:8]:
                    hi = history.row_key(_U64.unpack(k[:8])[0])  # cut before this revision
                    break
                found[k] = history.decode_row(txn, self.db, k, v)[1]
                last = k
            raw_floor = txn.get(history.FLOOR_KEY, db=self.meta_db)
        if raw_floor is not None and _U64.unpack(raw_floor)[0] > start:
            raise HistoryOutOfRange(start, _U64.unpack(raw_floor)[0])
        lo = history.row_key(start)
        for k, _t, ev in pending:
            if lo <= k < hi:
                found[k] = ev
        out: list[Event] = []
        for k in sorted(found):
            ev = found[k]
            if len(out) >= limit and ev.revision != out[-1].revision:
                break
            out.append(ev)
        return out
