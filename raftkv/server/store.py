"""What the host needs from a node's durable store: the Raft log (read by the core through LogStorage,
written by the host), the applied state machine, snapshots, and the member registry.

The host applies committed entries on its event-loop thread (into a write-back buffer) and persists one
Ready at a time on its I/O thread, never both at once; reads may come from any thread concurrently."""

from __future__ import annotations

from typing import Protocol

from ..core import Entry, HardState, Snapshot
from ..storage.interfaces import LogStore, StableStore, StateMachine


class NodeStore(LogStore, StableStore, StateMachine, Protocol):
    """A whole node store: the log, the hard state and the state machine (storage/interfaces.py), and the
    one synced transaction that carries all three (the one-fsync rule, DESIGN.md §4)."""

    def persist(self, hard_state: HardState | None, entries: list[Entry], snapshot: Snapshot | None,
                members: dict[int, bytes] | None, records: list[tuple[bytes, bytes]] | None = None) -> None:
        """One synced transaction: snapshot (installing its state), entries (truncating a conflicting
        suffix), hard state, and the write-back buffer with its applied index (and membership, if
        given)."""
        ...

    def strip_payloads(self, to: int) -> int:
        """Witness: rewrite the stored normal entries up to `to` without their payload; how many were."""
        ...

    def close(self) -> None: ...
