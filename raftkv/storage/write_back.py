"""The write-back layer over the `kv` sub-database (see DESIGN.md §4, "the one-fsync rule").

Committed entries are applied into memory, not into an LMDB write transaction of their own: a write then
costs one synced commit, its log append. The buffer maps full keys to their new sealed records (see
kv_records.py), or to None for a deleted key (a tombstone hiding what LMDB still holds). It reaches LMDB
whole, with the applied index it amounts to, inside a later synced transaction (the next Ready's log
append, or a timed flush); its entries are in the log meanwhile, so a crash loses only what the node
re-applies on start from the applied index LMDB carries.

`Overlay` is a KVView of changes over a base view: the buffer over LMDB for reads and applies, and one
command's changes over the buffer while it applies (kept only if the command applied whole, as a nested
LMDB transaction would be). Reads merge the two in key order, so a range scan sees exactly one state.
"""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, Protocol

from . import kv_records

FLUSH_MAX_ENTRIES = 10_000
FLUSH_MAX_SECONDS = 0.1
"""How far the write-back buffer may run ahead of the store before it is flushed on its own (DESIGN.md §4)."""


class FlushSchedule(ABC):
    """When a store's write-back buffer must reach LMDB (DESIGN.md §4: at most FLUSH_MAX_ENTRIES entries and
    FLUSH_MAX_SECONDS behind), shared by the LMDB store and its in-memory twin. The store keeps
    `_buf_entries`, `_dirty_since` (on its clock, `_now`) and `_buf`, and says what `dirty` and `persist` are."""

    _buf_entries: int
    _dirty_since: float | None
    _buf: dict[bytes, bytes | None]
    _hard: Any
    _hard_dirty: bool

    @abstractmethod
    def _now(self) -> float:
        """The store's clock (time.monotonic, or the simulator's)."""

    @abstractmethod
    def dirty(self) -> bool:
        """Whether memory holds applied entries or a commit index that LMDB does not."""

    @abstractmethod
    def persist(self, hard_state: Any, entries: list[Any], snapshot: Any, members: Any) -> None:
        """One synced transaction (the store's own)."""

    def note_hard_state(self, hard_state: Any) -> None:
        """A hard state that changed only its commit index: no fsync is owed for it (Raft recovers the
        commit index from its peers); it is written with the next synced transaction."""
        self._hard = hard_state
        self._hard_dirty = True
        self._mark_dirty()

    def _mark_dirty(self) -> None:
        """Start the age clock of the buffer when it first holds something LMDB does not."""
        if self._dirty_since is None and self.dirty():
            self._dirty_since = self._now()

    def flush_due(self, now: float | None = None) -> bool:
        """The buffer is FLUSH_MAX_ENTRIES entries or FLUSH_MAX_SECONDS behind LMDB: `flush` it now."""
        if self._buf_entries >= FLUSH_MAX_ENTRIES:
            return True
        since = self._dirty_since
        return since is not None and (self._now() if now is None else now) - since >= FLUSH_MAX_SECONDS

    def flush_deadline(self) -> float | None:
        """When (on the store's clock) the buffer must be flushed at the latest, if it holds anything."""
        return None if self._dirty_since is None else self._dirty_since + FLUSH_MAX_SECONDS

    def flush(self) -> None:
        """Write the buffer and its applied index (and a pending commit index) in one synced transaction."""
        if self.dirty() or self._buf:
            self.persist(None, [], None, None)


class RecordView(Protocol):
    """What an Overlay needs beneath it: sealed records by full key, and in key order."""

    where: str

    def get_record(self, key: bytes) -> bytes | None: ...

    def records(self, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]: ...


_MISSING = object()


class Overlay:
    """`changes` (full key -> sealed record, None: deleted) over `base`. Writes go to `changes` only."""

    __slots__ = ("base", "changes", "where", "before")

    def __init__(self, base: RecordView, changes: dict[bytes, bytes | None] | None = None,
                 before: dict[bytes, bytes | None] | None = None) -> None:
        self.base = base
        self.changes: dict[bytes, bytes | None] = {} if changes is None else changes
        self.where = base.where
        self.before = before
        """For a command's view: each changed key's sealed record in the base before the command (the
        change history's previous values), taken at the key's first write."""

    def child(self) -> Overlay:
        """A view for one command: merge its changes with `merge` once it applied whole."""
        return Overlay(self, before={})

    def merge(self, child: Overlay) -> None:
        self.changes.update(child.changes)  # one C call: a reader on another thread sees all or none

    # -- records ---------------------------------------------------------------------------------
    def get_record(self, key: bytes) -> bytes | None:
        rec = self.changes.get(key, _MISSING)
        if rec is _MISSING:
            return self.base.get_record(key)
        return rec  # type: ignore[return-value]

    def records(self, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """The merge of `changes` and the base, in key order; a change wins over the base's record."""
        mine = sorted_changes(list(self.changes.items()), start)
        i = 0
        for k, rec in self.base.records(start):
            while i < len(mine) and mine[i][0] < k:
                if mine[i][1] is not None:
                    yield mine[i]  # type: ignore[misc]
                i += 1
            if i < len(mine) and mine[i][0] == k:
                if mine[i][1] is not None:
                    yield mine[i]  # type: ignore[misc]
                i += 1
                continue
            yield k, rec
        for k, r in mine[i:]:
            if r is not None:
                yield k, r

    # -- KVView ----------------------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        rec = self.get_record(key)
        return None if rec is None else kv_records.unseal(key, rec, self.where)

    def put(self, key: bytes, body: bytes) -> None:
        if not key:
            raise ValueError("an empty key cannot be stored")
        if self.before is not None and key not in self.before:
            self.before[key] = self.base.get_record(key)
        self.changes[key] = kv_records.seal(key, body)

    def delete(self, key: bytes) -> None:
        if self.before is not None and key not in self.before:
            self.before[key] = self.base.get_record(key)
        self.changes[key] = None

    def scan(self, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        for k, rec in self.records(start):
            yield k, kv_records.unseal(k, rec, self.where)


def sorted_changes(items: list[tuple[bytes, bytes | None]], start: bytes) -> list[tuple[bytes, bytes | None]]:
    """`items` from `start` on, sorted by key."""
    items.sort(key=lambda kv: kv[0])
    return items[bisect.bisect_left(items, start, key=lambda kv: kv[0]):]
