"""What the host needs from a node's durable store: the Raft log (read by the core through LogStorage,
written by the host), the applied state machine, snapshots, and the member registry.

The host applies committed entries on its event-loop thread (into a write-back buffer) and persists one
Ready at a time on its I/O thread, never both at once; reads may come from any thread concurrently."""

from __future__ import annotations

from typing import Any, Protocol

from ..core import ConfState, Entry, HardState, LogStorage, Snapshot


class NodeStore(Protocol):
    last_apply_seconds: float
    """Time the last `apply` took (for the apply histogram)."""

    @property
    def log(self) -> LogStorage: ...

    def bootstrap(self, conf: ConfState, contexts: dict[int, bytes]) -> None:
        """Write a founding member's first entries (a no-op on a store that has a log)."""
        ...

    def apply(self, committed: list[Entry], conf: ConfState | None) -> list[Any]:
        """Apply committed entries into the write-back buffer, which reads see at once; one result per
        entry (an Exception instance for a command that failed alone). Nothing is written yet."""
        ...

    def encode_entries(self, entries: list[Entry]) -> list[tuple[bytes, bytes]]:
        """The log records of `entries`, made on the calling thread, for `persist`."""
        ...

    def persist(self, hard_state: HardState | None, entries: list[Entry], snapshot: Snapshot | None,
                members: dict[int, bytes] | None, records: list[tuple[bytes, bytes]] | None = None) -> None:
        """One synced transaction: snapshot (installing its state), entries (truncating a conflicting
        suffix), hard state, and the write-back buffer with its applied index (and membership, if
        given)."""
        ...

    def note_hard_state(self, hard_state: HardState) -> None:
        """A hard state whose only change is its commit index: written with the next transaction."""
        ...

    def hard_state(self) -> HardState: ...

    def flush(self) -> None:
        """Write the write-back buffer and its applied index alone, in one synced transaction."""
        ...

    def flush_due(self, now: float | None = None) -> bool: ...

    def flush_deadline(self) -> float | None: ...

    def durable_applied_index(self) -> int:
        """The applied index LMDB holds (the buffer's lags it): the most that compaction may drop."""
        ...

    def applied_index(self) -> int: ...

    def snapshot_index(self) -> int: ...

    def log_bytes(self) -> int:
        """Bytes the Raft log occupies, for size-based compaction."""
        ...

    def compact(self, compact_to: int, compact_conf: ConfState) -> int:
        """Record a snapshot point at the applied index and compact the log through `compact_to`; no image
        is made: the transport streams the state machine to a follower that needs it."""
        ...

    def snapshot_members(self) -> dict[int, bytes]: ...

    def load_members(self) -> dict[int, bytes]: ...

    def close(self) -> None: ...
