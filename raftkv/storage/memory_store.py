"""MemoryNodeStore: the in-memory twin of LmdbNodeStore, for the simulator.

It implements the same interfaces (interfaces.py, and server/store.py's `NodeStore`) with the same rules:
committed entries are applied into a write-back buffer over the durable `kv` records (the same
state_machine.py and write_back.py code, so results, revisions and failures are LMDB's), and one
`persist` carries a Ready's entries, hard state and the buffer with its applied index. What `persist` and
`flush` write goes to a `MemoryDisk`, which outlives the store: a crash drops the store (its buffer, and
any transaction the simulated I/O had not finished) and `reopen` builds a new one from the disk, as a
restarted process opens its LMDB file.

Faults the disk can be given (the simulator draws them per seed):
- a crash loses whatever was not synced (the store's memory, and a transaction still in flight);
- a torn write: a crash in the middle of a transaction leaves part of its records on the disk without
  its commit mark; `reopen` finds and drops them, as LMDB's copy-on-write commit does;
- a flipped bit in a stored log record: every record carries a checksum verified on read and on reopen,
  so it is reported (CorruptionError), never applied or replicated;
- a slow fsync is the simulated I/O executor's delay, not the store's.
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack

from ..core import (
    CompactedError,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Snapshot,
    SnapshotMeta,
    bootstrap_entries,
)
from ..core.witness import META_ONLY
from . import commands, state_machine
from .commands import KV, Range, RangeResult
from .errors import CommandFailed, CorruptionError
from .log_bounds import LogBounds
from .write_back import FlushSchedule, Overlay


def _crc(index: int, term: int, etype: int, data: bytes) -> int:
    return zlib.crc32(data, zlib.crc32(b"%d:%d:%d:" % (index, term, etype)))


@dataclass(slots=True)
class _Record:
    term: int
    etype: int
    data: bytes
    crc: int
    committed: bool = True
    """False for a record of a transaction torn by a crash (no commit mark): dropped on reopen."""


@dataclass
class MemoryDisk:
    """What survives a crash: the durable side of one node's store."""

    node_id: int
    cluster_id: bytes = b""
    log: dict[int, _Record] = field(default_factory=dict)
    compacted: tuple[int, int, ConfState] = (0, 0, ConfState())
    hard: HardState = field(default_factory=HardState)
    kv: dict[bytes, bytes] = field(default_factory=dict)
    applied: int = 0
    applied_conf: ConfState = field(default_factory=ConfState)
    members: dict[int, bytes] = field(default_factory=dict)
    snap_point: int = 0
    syncs: int = 0

    def flip_bit(self, index: int, bit: int = 0) -> bool:
        """Corrupt the stored record of log entry `index` (a bit of its data or its term); False if the
        disk holds no such record."""
        rec = self.log.get(index)
        if rec is None:
            return False
        if rec.data:
            b = bytearray(rec.data)
            b[bit % len(b)] ^= 1 << (bit % 8)
            rec.data = bytes(b)
        else:
            rec.term ^= 1
        return True

    def tear(self, entries: list[Entry], keep: int) -> None:
        """A crash in the middle of a transaction appending `entries`: the first `keep` records reached
        the disk, the last of them half written, none marked committed."""
        for i, e in enumerate(entries[:keep]):
            data = e.data[: len(e.data) // 2] if i == keep - 1 else e.data
            self.log.setdefault(e.index, _Record(e.term, int(e.type), data, _crc(e.index, e.term, int(e.type),
                                                                                 e.data), committed=False))


class _DictRecords:
    """A RecordView over a dict of sealed records (the disk's `kv`)."""

    def __init__(self, records: dict[bytes, bytes], where: str) -> None:
        self._records = records
        self.where = where

    def get_record(self, key: bytes) -> bytes | None:
        return self._records.get(key)

    def records(self, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        keys = sorted(self._records)
        for k in keys[bisect.bisect_left(keys, start):]:
            yield k, self._records[k]


class MemoryNodeStore(LogBounds, FlushSchedule):
    """A node store over a MemoryDisk; `clock` dates the write-back buffer (the simulator's clock)."""

    def __init__(self, disk: MemoryDisk, clock: Callable[[], float]) -> None:
        self.disk = disk
        self.node_id = disk.node_id
        self.cluster_id = disk.cluster_id
        self.where = f"node {disk.node_id} (memory)"
        self._stripped_to = 0  # witness: no payload stored up to here (strip_payloads)
        self._clock = clock
        self.last_apply_seconds = 0.0
        self.on_apply: Callable[[Entry], None] | None = None
        """Told of every entry applied (the simulator's state-machine safety check)."""
        self._open()

    @classmethod
    def reopen(cls, disk: MemoryDisk, clock: Callable[[], float]) -> MemoryNodeStore:
        """The store as a restarted process finds it: torn transactions dropped, every record checked."""
        return cls(disk, clock)

    def _open(self) -> None:
        d = self.disk
        for idx in sorted(i for i, r in d.log.items() if not r.committed):
            del d.log[idx]  # a torn transaction never committed: rolled back whole
        self._compacted = d.compacted
        if d.log and max(d.log) > d.compacted[0]:  # (rows at or below it: an interrupted compaction's)
            self._last_index = max(d.log)
            self._last_term = self._decode(self._last_index).term
        else:
            self._last_index, self._last_term = d.compacted[0], d.compacted[1]
        for idx in sorted(d.log):
            self._decode(idx)  # a flipped bit anywhere stops the node here, naming the entry
        self._hard = d.hard
        self._hard_dirty = False
        self._applied, self._applied_conf = d.applied, d.applied_conf
        self._buf: dict[bytes, bytes | None] = {}
        self._buf_entries = 0
        self._dirty_since: float | None = None

    def _decode(self, index: int) -> Entry:
        rec = self.disk.log.get(index)
        if rec is None:
            raise CompactedError(index)
        if _crc(index, rec.term, rec.etype, rec.data) != rec.crc:
            raise CorruptionError(f"{self.where}: log entry {index} fails its checksum (data corrupted on disk)")
        return Entry(rec.term, index, EntryType(rec.etype), rec.data)

    # -- LogStorage (read by the core) -----------------------------------------------------------------
    @property
    def log(self) -> MemoryNodeStore:
        return self

    def _stored_term(self, index: int) -> int:
        return self._decode(index).term

    def _stored_entries(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry]:
        if max_bytes is None:
            return [self._decode(i) for i in range(lo, hi)]
        out: list[Entry] = []
        total = 0
        for i in range(lo, hi):  # decoded only as far as the size limit reaches (as LMDB's cursor reads)
            e = self._decode(i)
            total += e.size()
            if total > max_bytes and out:
                break
            out.append(e)
        return out

    def snapshot(self) -> Snapshot:
        """The durable state machine, whole, inside the message (the simulated network carries it)."""
        d = self.disk
        body = msgpack.packb({"kv": sorted(d.kv.items()), "members": d.members}, use_bin_type=True)
        return Snapshot(SnapshotMeta(d.applied, self.term(d.applied), d.applied_conf), body)

    # -- LogStore / StableStore ------------------------------------------------------------------------
    def bootstrap(self, conf: ConfState, contexts: dict[int, bytes]) -> None:
        if self._last_index > 0 or self._hard.term > 0:
            return
        entries, hs = bootstrap_entries(conf, contexts)
        self.persist(hs, entries, None, None)

    def adopt_cluster_id(self, cluster_id: bytes) -> None:
        self.disk.cluster_id = self.cluster_id = cluster_id

    def encode_entries(self, entries: list[Entry]) -> list[tuple[bytes, bytes]]:
        return []

    def log_bytes(self) -> int:
        return sum(len(r.data) + 24 for r in self.disk.log.values())

    def snapshot_index(self) -> int:
        return self.disk.snap_point

    def compact(self, compact_to: int, compact_conf: ConfState) -> int:
        index = self.start_compaction(compact_to, compact_conf)
        while self.compaction_step():
            pass
        return index

    def start_compaction(self, compact_to: int, compact_conf: ConfState) -> int:
        """As the LMDB store's: the point is recorded at once, the log's rows below it go in steps (a
        crash between steps leaves them on the disk, below the point)."""
        d = self.disk
        applied = d.applied
        d.snap_point = applied
        compact_to = min(compact_to, applied)
        if compact_to > self._compacted[0]:
            term = self.term(compact_to)
            d.compacted = self._compacted = (compact_to, term, compact_conf)
        return applied

    def compaction_step(self, max_rows: int = 10_000) -> bool:
        d = self.disk
        below = sorted(i for i in d.log if i <= self._compacted[0])
        for idx in below[:max_rows]:
            del d.log[idx]
        return len(below) > max_rows

    def take_damaged_history(self) -> list[int]:
        return []  # no change history here (the simulator's store)

    def hard_state(self) -> HardState:
        return self._hard

    # -- StateMachine -------------------------------------------------------------------------------
    def _base(self) -> Overlay:
        return Overlay(_DictRecords(self.disk.kv, self.where), self._buf)

    def apply(self, committed: list[Entry], conf: ConfState | None) -> list[Any]:
        results: list[Any] = []
        base = self._base()
        for e in committed:
            if e.index <= self._applied:
                results.append(None)
                continue
            results.append(self._apply_one(base, e))
            self._applied = e.index
            self._buf_entries += 1
            if self.on_apply is not None:
                self.on_apply(e)
        if conf is not None:
            self._applied_conf = conf
        self._mark_dirty()
        return results

    @staticmethod
    def _apply_one(base: Overlay, e: Entry) -> Any:
        if e.type != EntryType.NORMAL or not e.data:
            return None
        try:
            cmd = commands.decode(e.data)
        except ValueError as err:
            return err
        child = base.child()
        try:
            result = state_machine.apply_command(child, cmd, e.index)
        except Exception as err:  # noqa: BLE001 - a command's own fault fails it alone, as in LMDB
            return CommandFailed(f"the command at index {e.index} cannot be applied: {type(err).__name__}: {err}")
        base.merge(child)
        return result

    def dirty(self) -> bool:
        return self._applied > self.disk.applied or self._hard_dirty

    def _now(self) -> float:
        return self._clock()

    def persist(self, hard_state: HardState | None, entries: list[Entry], snapshot: Snapshot | None,
                members: dict[int, bytes] | None, records: list[tuple[bytes, bytes]] | None = None) -> None:
        """One synced transaction, applied to the disk whole (the simulated I/O runs it only once its
        fsync has finished: a crash before that loses all of it)."""
        d = self.disk
        hs = hard_state if hard_state is not None else (self._hard if self._hard_dirty else None)
        if snapshot is not None:
            m = snapshot.meta
            if snapshot.data == META_ONLY:
                d.kv = {}  # a witness's snapshot is metadata only: it holds no state machine
            else:
                body = msgpack.unpackb(snapshot.data, strict_map_key=False)
                d.kv = {bytes(k): bytes(r) for k, r in body["kv"]}
                d.members = {int(k): bytes(v) for k, v in body["members"].items()}
            d.log.clear()
            d.compacted = self._compacted = (m.index, m.term, m.conf)
            self._last_index, self._last_term = m.index, m.term
            d.applied, d.applied_conf = m.index, m.conf
            self._applied, self._applied_conf = m.index, m.conf
            d.snap_point = m.index
        else:
            for k, v in self._buf.items():
                if v is None:
                    d.kv.pop(k, None)
                else:
                    d.kv[k] = v
            d.applied, d.applied_conf = self._applied, self._applied_conf
        self._buf = {}
        self._buf_entries = 0
        self._dirty_since = None
        if entries:
            first = entries[0].index
            for idx in [i for i in d.log if i >= first]:
                del d.log[idx]
            for e in entries:
                d.log[e.index] = _Record(e.term, int(e.type), e.data, _crc(e.index, e.term, int(e.type), e.data))
            self._last_index, self._last_term = entries[-1].index, entries[-1].term
            self._stripped_to = min(self._stripped_to, first - 1)
        if hs is not None:
            d.hard = self._hard = hs
        self._hard_dirty = False
        if members is not None:
            d.members = dict(members)
        d.syncs += 1

    def strip_payloads(self, to: int) -> int:
        """Witness: rewrite the stored normal entries up to `to` without their payload."""
        n = 0
        st = int(EntryType.STRIPPED)
        hi = min(to, self._last_index)
        for idx in range(max(self._stripped_to + 1, self.first_index()), hi + 1):
            rec = self.disk.log.get(idx)
            if rec is not None and rec.etype == int(EntryType.NORMAL) and rec.data and rec.committed:
                self.disk.log[idx] = _Record(rec.term, st, b"", _crc(idx, rec.term, st, b""))
                n += 1
        self._stripped_to = max(self._stripped_to, hi)
        return n

    def applied_index(self) -> int:
        return self._applied

    def durable_applied_index(self) -> int:
        return self.disk.applied

    def applied_conf(self) -> ConfState:
        return self._applied_conf

    def snapshot_members(self) -> dict[int, bytes]:
        return dict(self.disk.members)

    def load_members(self) -> dict[int, bytes]:
        return dict(self.disk.members)

    # -- client reads ------------------------------------------------------------------------------
    def get_at(self, key: bytes) -> tuple[KV | None, int]:
        return state_machine.get(self._base(), key), self._applied

    def get(self, key: bytes) -> KV | None:
        return self.get_at(key)[0]

    def range_at(self, op: Range, limit_bytes: int = 0) -> tuple[RangeResult, int]:
        view = Overlay(_DictRecords(self.disk.kv, self.where), dict(self._buf))
        return state_machine.range_read(view, op, limit_bytes), self._applied

    def close(self) -> None:
        return None
