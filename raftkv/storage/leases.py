"""The lease table: which leases exist, their TTL, and which keys are attached to each.

Part of the replicated state machine, changed only by applying committed entries (grant, revoke, a put
naming a lease, a delete of an attached key), and carried in snapshots: the `leases` sub-database is one
of snapshots.SNAPSHOT_DBS. A lease's time left is not here: it is the leader's (server/lease_keeper.py),
which commits a revoke once a lease is not kept alive; so every node deletes the keys at one revision.

The table lives in memory (what applying reads and changes, ahead of LMDB by the write-back buffer) and
in LMDB as rows: u64 big-endian id -> msgpack [ttl, granted revision], and id + b"k" + key -> b"" for each
attached key. `dirty` holds the rows changed since LMDB last took them; they are written in the same
synced transaction as the `kv` rows (node_store.py), and the table is loaded again from LMDB on start and
after a snapshot is installed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import lmdb
import msgpack

from .commands import MAX_LEASE_ID, LeaseGrant, LeaseRevoke
from .errors import LeaseExists, LeaseNotFound

_ID = struct.Struct(">Q")


@dataclass(slots=True)
class Lease:
    lease_id: int
    ttl: int
    granted: int
    """The revision that granted it."""
    keys: set[bytes] = field(default_factory=set)


@dataclass(slots=True)
class GrantResult:
    lease_id: int
    ttl: int
    revision: int


@dataclass(slots=True)
class RevokeResult:
    lease_id: int
    revision: int
    deleted: int


class LeaseTable:
    def __init__(self) -> None:
        self.leases: dict[int, Lease] = {}
        self.dirty: dict[bytes, bytes | None] = {}
        self.version = 0
        """Counts grants and removals: a reader that kept a view of the set of leases (the lease keeper's
        deadlines) re-reads the table only when this moved."""

    def __contains__(self, lease_id: int) -> bool:
        return lease_id in self.leases

    def get(self, lease_id: int) -> Lease | None:
        return self.leases.get(lease_id)

    # -- applying -----------------------------------------------------------------------------
    def grant(self, cmd: LeaseGrant, revision: int) -> GrantResult:
        lease_id = cmd.lease_id or revision
        if lease_id in self.leases:
            raise LeaseExists(lease_id)
        self.leases[lease_id] = Lease(lease_id, cmd.ttl, revision)
        self.version += 1
        self.dirty[_ID.pack(lease_id)] = msgpack.packb([cmd.ttl, revision])
        return GrantResult(lease_id, cmd.ttl, revision)

    def keys_of(self, cmd: LeaseRevoke) -> list[bytes]:
        """The keys a revoke deletes, in key order (so every node makes the same events)."""
        lease = self.leases.get(cmd.lease_id)
        if lease is None:
            raise LeaseNotFound(cmd.lease_id)
        return sorted(lease.keys)

    def remove(self, lease_id: int) -> None:
        lease = self.leases.pop(lease_id)
        self.version += 1
        head = _ID.pack(lease_id)
        self.dirty[head] = None
        for k in lease.keys:
            self.dirty[head + b"k" + k] = None

    def changed(self, key: bytes, old: int, new: int) -> None:
        """A key's record changed (applied) from lease `old` to lease `new` (0: none): move it."""
        if old == new:
            return
        if old and old in self.leases:
            self.leases[old].keys.discard(key)
            self.dirty[_ID.pack(old) + b"k" + key] = None
        if new and new in self.leases:
            self.leases[new].keys.add(key)
            self.dirty[_ID.pack(new) + b"k" + key] = b""

    # -- LMDB ---------------------------------------------------------------------------------
    def write(self, txn: lmdb.Transaction, db: Any) -> None:
        for k, v in self.dirty.items():
            if v is None:
                txn.delete(k, db=db)
            else:
                txn.put(k, v, db=db)

    def written(self) -> None:
        self.dirty = {}

    @classmethod
    def load(cls, rows: Iterable[tuple[bytes, bytes]]) -> LeaseTable:
        table = cls()
        for k, v in rows:
            k = bytes(k)
            lease_id = _ID.unpack(k[:8])[0]
            if len(k) == 8:
                ttl, granted = msgpack.unpackb(v)
                lease = table.leases.get(lease_id)
                if lease is None:
                    table.leases[lease_id] = Lease(lease_id, ttl, granted)
                else:
                    lease.ttl, lease.granted = ttl, granted
            else:
                table.leases.setdefault(lease_id, Lease(lease_id, 0, 0)).keys.add(k[9:])
        return table


__all__ = ["MAX_LEASE_ID", "GrantResult", "Lease", "LeaseExists", "LeaseNotFound", "LeaseTable", "RevokeResult"]
