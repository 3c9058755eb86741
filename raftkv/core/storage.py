"""The read side of stable storage, as the core sees it, and an in-memory implementation.

The core never writes to disk: it tells the host what to persist through `Ready`. It only *reads* what
the host has already made durable, through the small `LogStorage` protocol below (as in etcd-io/raft's
`Storage`). The server backs it with LMDB; the simulator and the unit tests with `MemoryStorage`.
"""

from __future__ import annotations

from typing import Protocol

from .membership import bootstrap_entries
from .types import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from .witness import strip_held


class StorageError(Exception):
    """Base of the errors a LogStorage may raise to the core."""


class CompactedError(StorageError):
    """The requested index is older than the first index still in the log (it lives in the snapshot)."""


class UnavailableError(StorageError):
    """The requested index is beyond the last index in the log."""


class SnapshotTemporarilyUnavailable(StorageError):
    """A snapshot is being prepared; the core retries later."""


class LogStorage(Protocol):
    """What the core reads from durable storage. Indices are 1-based; index 0 is "before the log"."""

    def initial_state(self) -> tuple[HardState, ConfState]:
        """Persisted hard state, and membership as of the latest snapshot (conf entries after it are
        found by the core in the log itself)."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi). Returns at least one entry if any is in range, even past `max_bytes`."""
        ...

    def term(self, index: int) -> int:
        """Term of entry `index`, valid for first_index()-1 <= index <= last_index()."""
        ...

    def first_index(self) -> int:
        """Index of the first entry still in the log (snapshot index + 1)."""
        ...

    def last_index(self) -> int:
        """Index of the last durable entry (the snapshot index when the log is empty)."""
        ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot, to send to a follower behind the compacted log."""
        ...


def limit_size(entries: list[Entry], max_bytes: int | None) -> list[Entry]:
    """The longest prefix of `entries` within `max_bytes`, but never empty if `entries` is not."""
    if max_bytes is None or not entries:
        return entries
    total = 0
    for i, e in enumerate(entries):
        total += e.size()
        if total > max_bytes and i > 0:
            return entries[:i]
    return entries


class MemoryStorage:
    """LogStorage held in memory, with the write methods a host (or the simulator's disk) needs.

    `entries_[0]` is a dummy entry at the snapshot's index and term, so `term(snapshot.index)` works.
    """

    def __init__(self, conf: ConfState | None = None) -> None:
        """An empty log; with `conf`, a founding member's log holding the bootstrap entries."""
        self.hard_state = HardState()
        self.snap = Snapshot(SnapshotMeta(0, 0, ConfState()))
        self.entries_: list[Entry] = [Entry(0, 0)]
        if conf is not None and conf.voters:
            entries, self.hard_state = bootstrap_entries(conf)
            self.entries_.extend(entries)

    # -- LogStorage ------------------------------------------------------------------------------
    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self.snap.meta.conf

    def first_index(self) -> int:
        return self.entries_[0].index + 1

    def last_index(self) -> int:
        return self.entries_[0].index + len(self.entries_) - 1

    def term(self, index: int) -> int:
        offset = self.entries_[0].index
        if index < offset:
            raise CompactedError(index)
        if index - offset >= len(self.entries_):
            raise UnavailableError(index)
        return self.entries_[index - offset].term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        offset = self.entries_[0].index
        if lo <= offset:
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise UnavailableError(hi)
        return limit_size(self.entries_[lo - offset : hi - offset], max_bytes)

    def snapshot(self) -> Snapshot:
        return self.snap

    # -- writes (host side) ----------------------------------------------------------------------
    def set_hard_state(self, hs: HardState) -> None:
        self.hard_state = hs

    def append(self, entries: list[Entry]) -> None:
        """Append, truncating any conflicting suffix first (entries[0].index may be <= last_index)."""
        if not entries:
            return
        first = self.first_index()
        if entries[-1].index < first:
            return
        if entries[0].index < first:
            entries = entries[first - entries[0].index :]
        offset = entries[0].index - self.entries_[0].index
        if offset > len(self.entries_):
            raise ValueError(f"gap in log: append at {entries[0].index}, last {self.last_index()}")
        del self.entries_[offset:]
        self.entries_.extend(entries)

    def strip_payloads(self, to: int) -> int:
        """Witness: drop the payloads of the normal entries up to `to` (every data voter holds them)."""
        held = self.entries_[1:]
        n = strip_held(held, to)
        self.entries_[1:] = held
        return n

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace the log with a snapshot received from the leader."""
        if snap.meta.index <= self.snap.meta.index:
            return
        self.snap = snap
        self.entries_ = [Entry(snap.meta.term, snap.meta.index)]

    def create_snapshot(self, index: int, conf: ConfState, data: bytes) -> Snapshot:
        """Record a snapshot of the state machine taken at applied `index`."""
        if index <= self.snap.meta.index:
            return self.snap
        if index > self.last_index():
            raise ValueError(f"snapshot index {index} beyond last index {self.last_index()}")
        self.snap = Snapshot(SnapshotMeta(index, self.term(index), conf), data)
        return self.snap

    def compact(self, index: int) -> None:
        """Drop entries up to and including `index` (which must already be in a snapshot)."""
        offset = self.entries_[0].index
        if index <= offset:
            return
        if index > self.last_index():
            raise ValueError(f"compact {index} beyond last index {self.last_index()}")
        i = index - offset
        self.entries_ = [Entry(self.entries_[i].term, index)] + self.entries_[i + 1 :]
