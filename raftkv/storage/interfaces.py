"""The small interfaces a node's durable store is made of, in the style of hashicorp/raft's `LogStore`,
`StableStore` and `FSM`: the host is written against these, so the LMDB store (node_store.py) and its
in-memory twin (memory_store.py, for the simulator) are interchangeable under it.

The one-fsync rule (DESIGN.md §4) ties them together: one synced transaction (`NodeStore.persist` in
server/store.py) carries a Ready's log entries, its hard state and the state machine's write-back buffer
with its applied index, so they are three views of one store, not three stores."""

from __future__ import annotations

from typing import Any, Protocol

from ..core import ConfState, Entry, HardState, LogStorage
from .commands import KV, Range, RangeResult


class LogStore(Protocol):
    """The Raft log: read by the core through `log`, appended by `persist`, compacted here."""

    @property
    def log(self) -> LogStorage: ...

    def bootstrap(self, conf: ConfState, contexts: dict[int, bytes]) -> None:
        """Write a founding member's first entries (a no-op on a store that has a log)."""
        ...

    def encode_entries(self, entries: list[Entry]) -> list[tuple[bytes, bytes]]:
        """The log records of `entries`, made on the calling thread, for `persist`."""
        ...

    def log_bytes(self) -> int:
        """Bytes the Raft log occupies, for size-based compaction."""
        ...

    def snapshot_index(self) -> int: ...

    def compact(self, compact_to: int, compact_conf: ConfState) -> int:
        """Record a snapshot point at the applied index and compact the log through `compact_to`; no image
        is made: the transport streams the state machine to a follower that needs it."""
        ...

    def start_compaction(self, compact_to: int, compact_conf: ConfState) -> int:
        """`compact`'s first part, one short transaction: the snapshot point and the log's compaction
        point are recorded (the log reads as compacted from here); returns the snapshot point."""
        ...

    def compaction_step(self, max_rows: int = ...) -> bool:
        """Delete about `max_rows` of the rows the compaction under way lets go, in one short transaction;
        whether any are left. `compact` is `start_compaction` and then every step."""
        ...

    def take_damaged_history(self) -> list[int]:
        """Revisions of change-history rows that failed their checksum and that compaction deleted since
        the last call (retention let them go), for the host to report."""
        ...


class StableStore(Protocol):
    """Raft's hard state (term, vote, commit)."""

    def hard_state(self) -> HardState: ...

    def note_hard_state(self, hard_state: HardState) -> None:
        """A hard state whose only change is its commit index: written with the next transaction."""
        ...


class StateMachine(Protocol):
    """The applied key-value state (the FSM): committed entries go into a write-back buffer that reads
    see at once, and reach durable storage with their applied index later."""

    last_apply_seconds: float
    """Time the last `apply` took (for the apply histogram)."""

    def apply(self, committed: list[Entry], conf: ConfState | None) -> list[Any]:
        """Apply committed entries into the write-back buffer, which reads see at once; one result per
        entry (an Exception instance for a command that failed alone). Nothing is written yet."""
        ...

    def applied_index(self) -> int: ...

    def durable_applied_index(self) -> int:
        """The applied index durable storage holds (the buffer's lags it): the most compaction may drop."""
        ...

    def flush(self) -> None:
        """Write the write-back buffer and its applied index alone, in one synced transaction."""
        ...

    def flush_due(self, now: float | None = None) -> bool: ...

    def flush_deadline(self) -> float | None: ...

    def snapshot_members(self) -> dict[int, bytes]: ...

    def load_members(self) -> dict[int, bytes]: ...

    def get_at(self, key: bytes) -> tuple[KV | None, int]:
        """A key as this node's state machine holds it now, and the applied index of that state."""
        ...

    def range_at(self, op: Range, limit_bytes: int = 0) -> tuple[RangeResult, int]:
        """A range as `get_at` reads a key; safe on any thread."""
        ...
