"""The cluster's alarms as the state machine holds them, and the hash of the key-value state.

**Alarms** (CORRUPT) are raised and disarmed by committed commands (ha_commands.py), applied on every
member. The table is kept in `meta` under `alarms`, written in the same synced transaction as the applied
index it belongs to (the store's `_write_buffer`), so after a crash the entries above that index are
re-applied and the table comes out the same; raising or disarming twice is the same as once. Alarms do
not travel in snapshots: a member that installs a snapshot past an alarm's entry does not hold it (the
next check raises it again if the divergence is still there).

**The hash** of the state at a revision: SHA-256 over every key in order, each key and its record body
(msgpack [value, create_revision, mod_revision, version]) length-prefixed. Every member computes it when it
applies a `HashKV` entry, over what it has applied before that entry, so all members hash one revision.
It is computed on the member's event loop, in O(keys): meant for a check every few minutes, not per write.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import msgpack

from .ha_commands import AlarmDisarm, AlarmRaise

_LEN = struct.Struct(">I")
KEEP_HASHES = 64


@dataclass(slots=True, frozen=True)
class KvHash:
    revision: int
    digest: bytes
    keys: int


def hash_state(records: Iterator[tuple[bytes, bytes]], revision: int) -> KvHash:
    """The hash of `records` ((key, body) in key order, as a KVView's scan yields them)."""
    sha = hashlib.sha256()
    n = 0
    for k, body in records:
        sha.update(_LEN.pack(len(k)))
        sha.update(k)
        sha.update(_LEN.pack(len(body)))
        sha.update(body)
        n += 1
    return KvHash(revision, sha.digest(), n)


class RecentHashes:
    """The hashes this member computed, by revision, the newest KEEP_HASHES (memory only: after a restart
    the entries above the durable applied index are re-applied, and hashed again)."""

    def __init__(self) -> None:
        self._by_revision: OrderedDict[int, KvHash] = OrderedDict()

    def note(self, h: KvHash) -> None:
        self._by_revision[h.revision] = h
        while len(self._by_revision) > KEEP_HASHES:
            self._by_revision.popitem(last=False)

    def get(self, revision: int) -> KvHash | None:
        return self._by_revision.get(revision)


@dataclass(slots=True, frozen=True)
class Alarm:
    kind: str
    member: int
    revision: int
    message: str


class AlarmTable:
    def __init__(self, raw: bytes | None = None) -> None:
        self._alarms: dict[tuple[str, int], Alarm] = {}
        self.dirty = False
        """Changed since the table was last written to LMDB."""
        if raw:
            for kind, member, revision, message in msgpack.unpackb(raw):
                self._alarms[(str(kind), int(member))] = Alarm(str(kind), int(member), int(revision), str(message))

    def apply(self, cmd: AlarmRaise | AlarmDisarm) -> None:
        if isinstance(cmd, AlarmRaise):
            key = (cmd.kind, cmd.member)
            if key not in self._alarms:
                self._alarms[key] = Alarm(cmd.kind, cmd.member, cmd.revision, cmd.message)
                self.dirty = True
            return
        for key in [k for k in self._alarms if k[0] == cmd.kind and cmd.member in (0, k[1])]:
            del self._alarms[key]
            self.dirty = True

    def all(self) -> list[Alarm]:
        return sorted(self._alarms.values(), key=lambda a: (a.kind, a.member))

    def encode(self) -> bytes:
        return msgpack.packb([[a.kind, a.member, a.revision, a.message] for a in self.all()], use_bin_type=True)
