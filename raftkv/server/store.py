"""What the host needs from a node's durable store: the Raft log (read by the core through LogStorage,
written by the host), the applied state machine, snapshots, and the member registry.

The host writes one Ready at a time, on its I/O thread or its event-loop thread; reads may come from the
event-loop thread concurrently (LMDB gives each reader a consistent snapshot)."""

from __future__ import annotations

from typing import Any, Protocol

from ..core import ConfState, Entry, HardState, LogStorage, Snapshot


class PreparedWrite(Protocol):
    results: list[Any]
    """One result per committed entry, as `save_and_apply` returns them; known before the commit."""
    seconds: float
    """How long `commit()` took, once done."""

    def commit(self) -> None:
        """Write and fsync the prepared records in one transaction (on any one thread)."""
        ...


class NodeStore(Protocol):
    last_apply_seconds: float
    """Time the last save_and_apply or prepare_ready spent applying its committed entries (for the apply
    histogram)."""

    @property
    def log(self) -> LogStorage: ...

    def bootstrap(self, conf: ConfState, contexts: dict[int, bytes]) -> None:
        """Write a founding member's first entries (a no-op on a store that has a log)."""
        ...

    def save_and_apply(self, hard_state: HardState | None, entries: list[Entry], snapshot: Snapshot | None,
                       committed: list[Entry], conf: ConfState | None, members: dict[int, bytes] | None
                       ) -> list[Any]:
        """Make one Ready durable in one transaction and one fsync: snapshot (installing its state), entries
        (truncating a conflicting suffix), hard state, and the committed entries applied with the applied
        index (and membership, if given). Returns one result per committed entry (an Exception instance
        for a command that failed validation)."""
        ...

    def prepare_ready(self, hard_state: HardState | None, entries: list[Entry], snapshot: Snapshot | None,
                      committed: list[Entry], conf: ConfState | None, members: dict[int, bytes] | None
                      ) -> PreparedWrite | None:
        """`save_and_apply` with its CPU work done now, on the calling thread, and only writing and
        fsyncing left for `commit()`; None when this Ready needs `save_and_apply` itself. No other write
        may be in flight meanwhile."""
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
