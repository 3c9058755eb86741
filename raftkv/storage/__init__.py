"""Durable state of a node in one LMDB environment: the Raft log, hard state, membership, snapshots and
the key-value state machine (applied in the same transaction as its applied index)."""

from .errors import CorruptionError, ForeignDataError, StorageError
from .node_store import LmdbNodeStore, cluster_id_for

__all__ = ["CorruptionError", "ForeignDataError", "LmdbNodeStore", "StorageError", "cluster_id_for"]
