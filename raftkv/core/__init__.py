"""The pure Raft core: no I/O, no clock, no threads. See node.py for the host's entry point."""

from .config import Config
from .errors import ConfChangeRejected, ProposalDropped, StepRejected
from .membership import bootstrap_entries
from .node import ProgressStatus, RaftNode, Status
from .storage import (
    CompactedError,
    LogStorage,
    MemoryStorage,
    SnapshotTemporarilyUnavailable,
    StorageError,
    UnavailableError,
)
from .types import (
    LOCAL_MESSAGES,
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Ready,
    Snapshot,
    SnapshotMeta,
    SoftState,
    StateRole,
)

__all__ = [
    "LOCAL_MESSAGES", "NONE", "CompactedError", "Config", "ConfChange", "ConfChangeRejected", "ConfChangeType", "ConfState",
    "Entry", "EntryType", "HardState", "LogStorage", "MemoryStorage", "Message", "MessageType",
    "ProgressStatus", "ProposalDropped", "RaftNode", "ReadState", "Ready", "Snapshot", "SnapshotMeta",
    "SnapshotTemporarilyUnavailable", "SoftState", "StateRole", "Status", "StepRejected", "StorageError",
    "UnavailableError",
    "bootstrap_entries",
]
