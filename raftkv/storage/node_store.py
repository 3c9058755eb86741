"""LmdbNodeStore: one LMDB environment per node, with named sub-databases:

- `log`: u64 big-endian index -> msgpack [term, type, data, crc32]; the crc covers index, term, type and
  data and is verified on every read, so a flipped bit is reported, never replicated or applied;
- `meta`: format version, node id, cluster id, hard state, applied record (index + membership as of
  it), compaction point, snapshot metadata, `state_gen` (which generation of the state machine is live);
- `kv`: the key-value state machine (see state_machine.py);
- `members`: member id -> address and replication marks;
- `kv~1`, `members~1`: the other generation of those two: a snapshot from a leader is staged there and
  installed by switching generations (snapshots.py), so either pair may be the live one: use `kv_db` and
  `members_db`, never the names;
- `snap`: legacy: the data of a snapshot installed whole (a snapshot now is `kv` itself, see snapshots.py);
- `leases` (and `leases~1`): the lease table (leases.py), part of the state machine and of snapshots;
- `history`: the change events that serve watches (history.py; each row sealed by a crc32); this node's own,
  not in snapshots.

A write costs one synced commit, its log append (DESIGN.md §4). The host `apply`s committed entries
into a write-back buffer over `kv` (write_back.py), which reads see first, and `persist`s each Ready in
one synced transaction: snapshot, entries, hard state, and the buffer with the applied index it amounts
to, side by side. When no Ready comes, `flush` writes the buffer alone (FLUSH_MAX_SECONDS,
FLUSH_MAX_ENTRIES). So the applied index in LMDB always matches the data beside it; on start the node
re-applies the log from it; compaction keeps every entry above it; snapshots are built from LMDB alone.
Reads (the core's LogStorage calls, client reads) may run on any thread: each sees the buffer over one
LMDB read transaction.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import lmdb
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
from ..core.storage import limit_size
from ..core.witness import META_ONLY, stripped
from . import history, identity, kv_records, sessions, snapshots, state_machine
from .alarms import AlarmTable, RecentHashes
from .commands import KV, Range, RangeResult
from .data_dir import DataDirLock, check_data_file, pages_bytes
from .entry_apply import EntryApplier
from .errors import CorruptionError, ForeignDataError, StorageError, opening_error
from .history import Event, Retention
from .history_store import HistoryRows
from .kv_records import BUCKET_THRESHOLD
from .leases import LeaseTable
from .log_bounds import LogBounds
from .write_back import FlushSchedule, Overlay

FORMAT = b"raftkv-3"
"""raftkv-2: `kv` records carry checksums and long keys live in buckets (kv_records.py). raftkv-3: a
history row is sealed and may name its record before by revision (history.py); a raftkv-2 directory is valid raftkv-3
data, so it opens and is marked raftkv-3 (a raftkv-2 binary then refuses it instead of misreading it)."""
UPGRADES = {b"raftkv-2"}
"""Earlier formats this one reads as they are."""
VERIFY_TAIL = 1000
COMPACTION_STEP_ROWS = 10_000
"""Rows one compaction step deletes (about 20 ms of the store's write lock): a compaction after a
million-key load deletes hundreds of thousands of history rows, and in one transaction that held every
write for longer than an election timeout."""
_U64 = struct.Struct(">Q")
_CRC_HEAD = struct.Struct(">QQB")


_STATE_HANDLES = {b"kv": "kv_db", b"members": "members_db", b"leases": "leases_db"}
"""The attribute holding the live handle of each sub-database of the state machine (snapshots.SNAPSHOT_DBS):
a sub-database added to the state machine goes in both."""


def cluster_id_for(peers: dict[int, str], token: str = "") -> bytes:
    """A founding cluster's id, the same on every founding node: derived from the founding members and
    an `--initial-cluster-token` (see storage/identity.py for the cluster id chosen without one)."""
    return identity.token_cluster_id(peers, token)


def _key(index: int) -> bytes:
    return _U64.pack(index)


def _crc(index: int, term: int, etype: int, data: bytes) -> int:
    return zlib.crc32(_CRC_HEAD.pack(index, term, etype) + data)


def _conf_to_wire(c: ConfState) -> list[list[int]]:
    """[voters, learners] as before witnesses existed; [voters, learners, witnesses] with any."""
    out = [sorted(c.voters), sorted(c.learners)]
    if c.witnesses:
        out.append(sorted(c.witnesses))
    return out


def _conf_from_wire(w: list[list[int]]) -> ConfState:
    return ConfState(frozenset(w[0]), frozenset(w[1]), frozenset(w[2]) if len(w) > 2 else frozenset())


class LmdbNodeStore(EntryApplier, LogBounds, FlushSchedule):
    def __init__(self, data_dir: str | Path, node_id: int, cluster_id: bytes | None = None,
                 map_size: int = 4 << 30, founding: bytes | None = None) -> None:
        self.path = Path(data_dir)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a missing mount, a file in the way: one line, and the node may retry
            raise StorageError(f"cannot create the data directory {self.path}: {e.strerror or e}") from None
        self.file = str(self.path / "data.mdb")
        self.node_id = node_id
        self._stripped_to = 0
        """Witness: the log holds no payload up to here (strip_payloads); 0 after opening (look again)."""
        self.where = f"node {node_id}: {self.file}"
        """Names this node and its file in a corruption report."""
        # Before LMDB touches anything: one process per directory, and no truncated file mapped (SIGBUS).
        self._dir_lock = DataDirLock(self.path)
        try:
            check_data_file(self.path, self._dir_lock.existed)
            self.env = lmdb.open(str(self.path), map_size=map_size, max_dbs=16, subdir=True, sync=True,
                                 metasync=True, lock=True, max_readers=256, readahead=False)
        except lmdb.Error as e:
            self._dir_lock.release()
            raise StorageError(f"{self.path}: cannot open the LMDB environment: {e}") from None
        except BaseException:
            self._dir_lock.release()
            raise
        try:
            self.log_db = self.env.open_db(b"log")
            self.meta_db = self.env.open_db(b"meta")
            self.kv_db = self.env.open_db(b"kv")
            self.members_db = self.env.open_db(b"members")
            self.snap_db = self.env.open_db(b"snap")
            self.history_db = self.env.open_db(b"history")
            self.leases_db = self.env.open_db(b"leases")
        except lmdb.Error as e:  # the main database's pages do not hold together, or a failing disk
            self.env.close()
            self._dir_lock.release()
            raise opening_error(self.where, e) from None
        self._lock = threading.Lock()
        self.last_apply_seconds = 0.0
        """Time the last `apply` took."""
        self._buf: dict[bytes, bytes | None] = {}
        """The write-back buffer (write_back.py): full key -> sealed record, None for a deleted key."""
        self._buf_entries = 0  # entries applied into the buffer since LMDB last took it
        self._dirty_since: float | None = None  # when memory first held what LMDB does not
        self._hard_dirty = False  # `_hard` has a commit index LMDB does not have yet
        self._install_gen = 0  # odd while a snapshot install replaces `kv` and the buffer
        self._install_lock = threading.Lock()  # held by the install meanwhile
        self.history = HistoryRows(self.history_db, self.meta_db)
        """The change history (history_store.py): its rows pending with the buffer, floor and retention."""
        self.event_sink: Any = None
        """Called on the applying thread after each `apply` with (events, applied index): the watch hub."""
        try:
            self._init_meta(node_id, cluster_id, founding)
            self._open_generations()
            self._load_cache()
            self._load_history_and_leases()
            self._verify_tail()
        except lmdb.Error as e:  # LMDB's own refusal of the file (damaged pages) or a failing disk
            self.close()
            raise opening_error(self.where, e) from None
        except BaseException:  # refused: let the directory go, so that it may be opened again
            self.close()
            raise

    # ------------------------------------------------------------------------------------------
    # Opening
    # ------------------------------------------------------------------------------------------
    def _init_meta(self, node_id: int, cluster_id: bytes | None, founding: bytes | None = None) -> None:
        """Check (or, for a new directory, write) whose data this is: node, cluster and incarnation.

        `founding` is a digest of the founding member list (`--peers`): a directory founded with another
        list is refused even before the cluster id is known. `created` tells the caller this directory was
        empty until now; `incarnation` is its random id (one is added to a directory written before
        incarnations existed)."""
        with self.env.begin(write=True, db=self.meta_db) as txn:
            fmt = txn.get(b"format")
            self.created = fmt is None
            if fmt is None:
                txn.put(b"format", FORMAT)
                txn.put(b"node_id", _U64.pack(node_id))
                if cluster_id:
                    txn.put(b"cluster_id", cluster_id)
                if founding:
                    txn.put(b"founding", founding)
                self.cluster_id = cluster_id or b""
                self.incarnation = identity.new_incarnation()
                txn.put(b"incarnation", self.incarnation)
                return
            if bytes(fmt) in UPGRADES:
                txn.put(b"format", FORMAT)
            elif bytes(fmt) != FORMAT:
                raise ForeignDataError(f"{self.file}: unknown data format {bytes(fmt)!r} (expected {FORMAT!r})")
            stored_id = _U64.unpack(txn.get(b"node_id"))[0]
            if stored_id != node_id:
                raise ForeignDataError(f"{self.file}: data belongs to node {stored_id}, not node {node_id}")
            stored_cluster = txn.get(b"cluster_id")
            if stored_cluster is not None and cluster_id and bytes(stored_cluster) != cluster_id:
                raise ForeignDataError(
                    f"{self.file}: data belongs to cluster {bytes(stored_cluster).hex()}, not {cluster_id.hex()} "
                    "(another cluster founded it: a different --peers or --initial-cluster-token)")
            stored_founding = txn.get(b"founding")
            if stored_founding is not None and founding and bytes(stored_founding) != founding:
                raise ForeignDataError(
                    f"{self.file}: data belongs to cluster founded by other members than --peers lists "
                    "(another cluster's data directory?)")
            self.cluster_id = bytes(stored_cluster) if stored_cluster is not None else (cluster_id or b"")
            if stored_cluster is None and cluster_id:
                txn.put(b"cluster_id", cluster_id)
            inc = txn.get(b"incarnation")
            if inc is None:
                inc = identity.new_incarnation()
                txn.put(b"incarnation", inc)
            self.incarnation = bytes(inc)

    def adopt_cluster_id(self, cluster_id: bytes) -> None:
        """Record the cluster id once it is known: from the first leader that talks to a joining node, or
        from the founding record the first leader of a cluster without a token committed. Never changes
        an id already recorded."""
        if self.cluster_id or not cluster_id:
            return
        with self.env.begin(write=True, db=self.meta_db) as txn:
            txn.put(b"cluster_id", cluster_id)
        self.cluster_id = cluster_id

    def _load_cache(self) -> None:
        with self.env.begin() as txn:
            raw = txn.get(b"compacted", db=self.meta_db)
            if raw is None:
                self._compacted = (0, 0, ConfState())
            else:
                idx, term, conf = msgpack.unpackb(raw)
                self._compacted = (idx, term, _conf_from_wire(conf))
            cur = txn.cursor(db=self.log_db)
            # Rows at or below the compaction point may be left by an interrupted compaction: not the log.
            if cur.last() and _U64.unpack(cur.key())[0] > self._compacted[0]:
                self._last_index = _U64.unpack(cur.key())[0]
                self._last_term = self._decode(self._last_index, cur.value()).term
            else:
                self._last_index, self._last_term = self._compacted[0], self._compacted[1]
            hs = txn.get(b"hardstate", db=self.meta_db)
            self._hard = HardState(*msgpack.unpackb(hs)) if hs is not None else HardState()
            sm = txn.get(b"snapmeta", db=self.meta_db)
            self._snap_point = int(msgpack.unpackb(sm)[0]) if sm is not None else 0
            ap = txn.get(b"applied", db=self.meta_db)
            if ap is None:
                self._applied, self._applied_conf = 0, ConfState()
            else:
                idx, conf = msgpack.unpackb(ap)
                self._applied, self._applied_conf = idx, _conf_from_wire(conf)
            self._durable_applied, self._durable_conf = self._applied, self._applied_conf
            self.alarms = AlarmTable(txn.get(b"alarms", db=self.meta_db))
            """The cluster's alarms as applied here (alarms.py), written beside the applied index."""
            self.hashes = RecentHashes()
            """Hashes of the state at revisions a HashKV entry asked for (alarms.py)."""

    def _load_history_and_leases(self) -> None:
        """The history's floor (a directory from before the history existed has none before its applied
        index) and the lease table of the live generation."""
        with self.env.begin(write=True) as txn:
            self.history.load(txn, self._durable_applied)
        self._reload_leases()

    def _reload_leases(self) -> None:
        with self.env.begin() as txn:
            self.leases = LeaseTable.load(txn.cursor(db=self._live_in(txn)[b"leases"]))

    def _verify_tail(self) -> None:
        lo = max(self.first_index(), self._last_index - VERIFY_TAIL + 1)
        if lo <= self._last_index:
            self.entries(lo, self._last_index + 1)

    def _decode(self, index: int, raw: bytes) -> Entry:
        try:
            term, etype, data, crc = msgpack.unpackb(raw)
        except (ValueError, msgpack.UnpackException):
            raise CorruptionError(f"{self.file}: log entry {index} cannot be decoded (data corrupted on disk)") from None
        if _crc(index, term, etype, data) != crc:
            raise CorruptionError(f"{self.file}: log entry {index} fails its checksum (data corrupted on disk)")
        return Entry(term, index, EntryType(etype), data)

    # ------------------------------------------------------------------------------------------
    # LogStorage (read by the core)
    # ------------------------------------------------------------------------------------------
    def _stored_term(self, index: int) -> int:
        with self.env.begin(db=self.log_db) as txn:
            raw = txn.get(_key(index))
        if raw is None:
            raise CompactedError(index)
        return self._decode(index, raw).term

    def _stored_entries(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry]:
        out: list[Entry] = []
        size = 0
        with self.env.begin(db=self.log_db) as txn:
            cur = txn.cursor()
            if not cur.set_key(_key(lo)):
                raise CompactedError(lo)
            for k, v in cur:
                idx = _U64.unpack(k)[0]
                if idx >= hi:
                    break
                e = self._decode(idx, v)
                size += e.size()
                if out and max_bytes is not None and size > max_bytes:
                    break
                out.append(e)
        return limit_size(out, max_bytes)

    def snapshot(self) -> Snapshot:
        """The snapshot a follower behind the compacted log needs: metadata only (the applied index, its
        term and membership), from the caches, at once.

        No image is built, here or at compaction (at a million keys a copy stalled the node for seconds):
        the `kv` sub-database at its applied index already is the snapshot. The transport streams it to
        the follower from a read transaction of its own (`open_snapshot_reader`), whose applied index may
        be later than this one, and the follower installs what that transaction held."""
        # LMDB's applied index, not the buffer's: a snapshot is cut only from durable state.
        applied, conf = self._durable_applied, self._durable_conf
        return Snapshot(SnapshotMeta(applied, self.term(applied), conf))

    # ------------------------------------------------------------------------------------------
    # Snapshot streams (see snapshots.py)
    # ------------------------------------------------------------------------------------------
    def _open_generations(self) -> None:
        """Point `kv_db` and `members_db` at the live generation of the state machine (see snapshots.py),
        and empty the other one of what an interrupted stage left there."""
        self._stage_lock = threading.Lock()
        self._stage_owner: object | None = None  # a stage under way, or the token of a complete one
        with self.env.begin(db=self.meta_db) as txn:
            self._generation = int(txn.get(b"state_gen") or b"0")
        try:
            self._generations = [[self.env.open_db(n) for n in snapshots.generation_names(g)] for g in (0, 1)]
            live = self._generations[self._generation]
            self._staging_dbs = self._generations[1 - self._generation]
            with self.env.begin(write=True) as txn:
                for db in self._staging_dbs:
                    if txn.stat(db)["entries"]:
                        txn.drop(db, delete=False)
        except lmdb.Error as e:  # e.g. a full disk: the node may start once it has space again
            raise StorageError(f"{self.where}: cannot open the state machine's sub-databases: {e}") from None
        self._set_live(live)

    def _live_in(self, txn: lmdb.Transaction) -> dict[bytes, Any]:
        """The state machine's sub-databases as `txn` sees them: the generation its snapshot of `meta`
        names. A reader resolves its handles from its own transaction, so it never pairs a generation with
        a transaction from the other side of an install (nor the applied index of one with the data of
        the other)."""
        gen = int(txn.get(b"state_gen", db=self.meta_db) or b"0")
        return dict(zip(snapshots.SNAPSHOT_DBS, self._generations[gen], strict=True))

    def _set_live(self, dbs: list[Any]) -> None:
        for name, db in zip(snapshots.SNAPSHOT_DBS, dbs, strict=True):
            setattr(self, _STATE_HANDLES[name], db)

    def _snapshot_dbs(self) -> list[Any]:
        return [getattr(self, _STATE_HANDLES[name]) for name in snapshots.SNAPSHOT_DBS]

    def open_snapshot_reader(self, chunk_bytes: int) -> snapshots.SnapshotReader:
        """The state machine as of now, in pieces, from one read transaction; use it on one thread."""
        return snapshots.SnapshotReader(self.env, lambda txn: list(self._live_in(txn).values()),
                                        self._snapshot_meta_in, chunk_bytes, self.where)

    def _snapshot_meta_in(self, txn: lmdb.Transaction) -> SnapshotMeta:
        raw = txn.get(b"applied", db=self.meta_db)
        applied, conf = msgpack.unpackb(raw) if raw is not None else (0, [[], []])
        return SnapshotMeta(applied, self._term_in(txn, applied), _conf_from_wire(conf))

    def stage_snapshot(self, meta: SnapshotMeta) -> snapshots.SnapshotStage:
        """Somewhere to put a snapshot as it arrives; `finish()` gives the token for the core's message.
        One at a time: another stage, or a complete one not yet installed or discarded, makes this raise
        OSError(EBUSY) (the sender retries later)."""
        with self._stage_lock:
            if self._stage_owner is not None:
                raise OSError(errno.EBUSY, "another snapshot is being received or installed")
            self._stage_owner = owner = object()

        def release() -> None:
            with self._stage_lock:
                if self._stage_owner is owner:
                    self._stage_owner = None

        def complete(token: bytes) -> None:
            with self._stage_lock:
                if self._stage_owner is owner:
                    self._stage_owner = token  # held for the install until it happens or is dropped

        try:
            return snapshots.SnapshotStage(self.env, self._staging_dbs, meta, f"node {self.node_id}", release,
                                           complete)
        except BaseException:
            release()
            raise

    def discard_staged(self, token: bytes) -> None:
        """A staged snapshot the core did not take (it held everything already): the next stage may begin.
        Its records stay in the staging generation until that stage empties it."""
        with self._stage_lock:
            if self._stage_owner == token:
                self._stage_owner = None

    # ------------------------------------------------------------------------------------------
    # Host writes
    # ------------------------------------------------------------------------------------------
    @property
    def log(self) -> LmdbNodeStore:
        return self

    def bootstrap(self, conf: ConfState, contexts: dict[int, bytes]) -> None:
        if self._last_index > 0 or self._hard.term > 0:
            return
        entries, hs = bootstrap_entries(conf, contexts)
        self.save_and_apply(hs, entries, None, [], None, None)

    def save_and_apply(self, hard_state: HardState | None, entries: list[Entry], snapshot: Snapshot | None,
                       committed: list[Entry], conf: ConfState | None, members: dict[int, bytes] | None
                       ) -> list[Any]:
        """One Ready made durable whole: its committed entries applied and everything written in one
        synced transaction (`apply` then `persist`; after it, for a snapshot). For bootstrap and tools;
        the host applies and persists separately, so that a write costs one synced commit."""
        results: list[Any] = []
        if snapshot is None and committed:
            results = self.apply(committed, conf)
        self.persist(hard_state, entries, snapshot, members)
        if snapshot is not None and committed:
            results = self.apply(committed, conf)
            self.persist(None, [], None, None)
        return results

    def apply(self, committed: list[Entry], conf: ConfState | None) -> list[Any]:
        """Apply committed entries into the write-back buffer; one result per entry (None for an entry
        applied already, an Exception for a command that failed alone). Nothing is written: the buffer and
        its applied index reach LMDB with the next `persist` or `flush`. Reads see the buffer at once.

        Called on one thread (the host's loop), never while a `persist` or `flush` runs."""
        applied = self._applied
        results: list[Any] = []
        events: list[Event] = []
        t0 = time.perf_counter()
        with self.env.begin(db=self.kv_db) as txn:
            base = Overlay(self._view(txn), self._buf)
            for e in committed:
                if e.index <= applied:
                    results.append(None)
                    continue
                results.append(self._apply_one(base, e, events))
                applied = e.index
                self._applied = applied
                self._buf_entries += 1
        self.history.record(events)
        self.last_apply_seconds = time.perf_counter() - t0
        if self.event_sink is not None and applied > 0:
            self.event_sink(events, self._applied)
        if conf is not None:
            self._applied_conf = conf
        self._mark_dirty()
        return results

    def dirty(self) -> bool:
        """Whether memory holds what LMDB does not: applied entries or a commit index."""
        return self._applied > self._durable_applied or self._hard_dirty

    def _now(self) -> float:
        return time.monotonic()

    def encode_entries(self, entries: list[Entry]) -> list[tuple[bytes, bytes]]:
        """The log records of `entries`, for `persist`: encoded by the caller (the host's loop), the I/O
        thread only hands them to LMDB, a few calls under the GIL."""
        return [(_key(e.index), self._record(e)) for e in entries]

    def persist(self, hard_state: HardState | None, entries: list[Entry], snapshot: Snapshot | None,
                members: dict[int, bytes] | None, records: list[tuple[bytes, bytes]] | None = None) -> None:
        """One synced transaction: the snapshot (installed over the buffer), log entries (truncating a
        conflicting suffix), the hard state, and the whole write-back buffer with the applied index it
        amounts to, beside it (and the member registry, if given; `records`: the entries already encoded
        by `encode_entries`). Only once it committed do the caches
        move and the buffer empty: a failed commit (a full disk) leaves both as they were, to try again.

        Called on one thread at a time (the host's I/O thread), while no `apply` runs."""
        with self._lock:  # held until the caches move too: compaction may run on another thread
            if snapshot is not None:
                self._install_lock.acquire()
                self._install_gen += 1  # readers wait out the install (see `_read_txn`)
            try:
                hs = hard_state if hard_state is not None else (self._hard if self._hard_dirty else None)
                applied, conf = self._applied, self._applied_conf
                with self.env.begin(write=True) as txn:
                    if snapshot is not None:
                        self._install(txn, snapshot)
                    else:
                        self._write_buffer(txn, applied, conf)
                    if entries:
                        self._append(txn, entries, records)
                    if hs is not None:
                        txn.put(b"hardstate", self._hard_state_record(hs), db=self.meta_db)
                    if members is not None:
                        self._write_members(txn, members)
                self._committed(hs, entries, snapshot, applied, conf)
                switch = snapshot is not None and snapshots.is_staged(snapshot.data)
            finally:
                if snapshot is not None:
                    self._install_gen += 1
                    self._install_lock.release()
            if switch:  # readers go on meanwhile: each resolves the generation from its own transaction
                self._switched_generation()
            if snapshot is not None:
                self._reload_leases()

    def _write_buffer(self, txn: lmdb.Transaction, applied: int, conf: ConfState) -> None:
        buf = self._buf
        if buf:
            t = BUCKET_THRESHOLD
            puts = [(k, v) for k, v in buf.items() if v is not None and len(k) < t]
            if puts:
                txn.cursor(db=self._live_in(txn)[b"kv"]).putmulti(puts)
            if len(puts) < len(buf):
                view = self._view(txn)
                for k, v in buf.items():
                    if v is None or len(k) >= t:
                        view.put_record(k, v)
        if applied != self._durable_applied or buf:
            txn.put(b"applied", self._applied_record(applied, conf), db=self.meta_db)
        if self.alarms.dirty:
            txn.put(b"alarms", self.alarms.encode(), db=self.meta_db)
        self._write_history_and_leases(txn)

    def _write_history_and_leases(self, txn: lmdb.Transaction) -> None:
        """The history rows and lease rows of the buffer's entries, in the buffer's transaction."""
        self.history.write(txn)
        if self.leases.dirty:
            self.leases.write(txn, self._live_in(txn)[b"leases"])

    def _append(self, txn: lmdb.Transaction, entries: list[Entry],
                records: list[tuple[bytes, bytes]] | None) -> None:
        first = entries[0].index
        cur = txn.cursor(db=self.log_db)
        if first <= self._last_index and cur.set_range(_key(first)):
            while cur.delete():  # truncate the conflicting suffix
                pass
        cur.putmulti(records if records is not None else self.encode_entries(entries))

    @staticmethod
    def _record(e: Entry) -> bytes:
        return msgpack.packb([e.term, int(e.type), e.data, _crc(e.index, e.term, int(e.type), e.data)],
                             use_bin_type=True)

    @staticmethod
    def _hard_state_record(hs: HardState) -> bytes:
        return msgpack.packb([hs.term, hs.vote, hs.commit])

    def _applied_record(self, applied: int, conf: ConfState | None) -> bytes:
        return msgpack.packb([applied, _conf_to_wire(conf if conf is not None else self._applied_conf)])

    def _committed(self, hard_state: HardState | None, entries: list[Entry], snapshot: Snapshot | None,
                   applied: int, conf: ConfState) -> None:
        """The transaction committed with fsync (sync=True): only now do the caches move and the buffer
        empty (what it held is in LMDB now, beside its applied index)."""
        if snapshot is not None:
            m = snapshot.meta
            self._compacted = (m.index, m.term, m.conf)
            self._last_index, self._last_term = m.index, m.term
            self._applied, self._applied_conf = m.index, m.conf
            self._durable_applied, self._durable_conf = m.index, m.conf
            self._snap_point = m.index
            self.history.cleared(m.index)
        else:
            self._durable_applied, self._durable_conf = applied, conf
        self.history.written()
        self.leases.written()
        self._buf = {}
        self._buf_entries = 0
        self._dirty_since = None
        if snapshot is None:
            self.alarms.dirty = False
        if entries:
            self._last_index, self._last_term = entries[-1].index, entries[-1].term
            self._stripped_to = min(self._stripped_to, entries[0].index - 1)  # a replaced suffix: look again
        if hard_state is not None:
            self._hard = hard_state
        self._hard_dirty = False

    def _view(self, txn: lmdb.Transaction) -> state_machine.TxnView:
        return state_machine.TxnView(txn, self._live_in(txn)[b"kv"], self.where)

    def _write_members(self, txn: lmdb.Transaction, members: dict[int, bytes]) -> None:
        txn.drop(self.members_db, delete=False)
        for nid, info in members.items():
            txn.put(_U64.pack(nid), info, db=self.members_db)

    def _install(self, txn: lmdb.Transaction, snap: Snapshot) -> None:
        """Make the snapshot's records the state machine, in the Ready's transaction: a staged stream (the
        usual case: the staged generation becomes the live one, see `_switched_generation`; the handles
        move after the commit, so nothing else in this transaction may touch the state machine), or data
        that came whole inside the message (from a node of an earlier version)."""
        m = snap.meta
        if snap.data == META_ONLY:
            # A witness's snapshot is metadata only: it holds no state machine to replace.
            self._install_witness_point(txn)
        elif snapshots.is_staged(snap.data):
            with self._stage_lock:
                if self._stage_owner != snap.data:
                    raise StorageError(f"{self.file}: the snapshot at index {m.index} is not the one staged here")
            txn.put(b"state_gen", b"%d" % (1 - self._generation), db=self.meta_db)
        else:
            self._install_whole(txn, snap)
        txn.drop(self.log_db, delete=False)
        self.history.clear(txn, m.index)
        txn.put(b"compacted", msgpack.packb([m.index, m.term, _conf_to_wire(m.conf)]), db=self.meta_db)
        txn.put(b"applied", msgpack.packb([m.index, _conf_to_wire(m.conf)]), db=self.meta_db)
        txn.put(b"snapmeta", msgpack.packb([m.index, m.term, _conf_to_wire(m.conf), None]), db=self.meta_db)
        txn.delete(b"data", db=self.snap_db)

    def _install_witness_point(self, txn: lmdb.Transaction) -> None:
        """A witness takes a snapshot's place in the log only: no key-value data, leases or history."""
        for db in (self.kv_db, self.leases_db):
            txn.drop(db, delete=False)

    def strip_payloads(self, to: int) -> int:
        """Witness: rewrite the stored normal entries up to `to` without their payload (every data voter
        holds them durably); how many were rewritten. Each entry is looked at once: a scan resumes where
        the last one ended, and nothing is written when there is nothing to strip (the usual case, as
        the leader sends a healthy cluster's witness no payload)."""
        lo = max(self._stripped_to + 1, self.first_index())
        hi = min(to, self._last_index)
        if hi < lo:
            return 0
        found: list[Entry] = []
        with self.env.begin(db=self.log_db) as txn:
            cur = txn.cursor()
            if cur.set_range(_key(lo)):
                for k, v in cur:
                    idx = _U64.unpack(k)[0]
                    if idx > hi:
                        break
                    e = self._decode(idx, v)
                    if e.type == EntryType.NORMAL and e.data:
                        found.append(stripped(e))
        if found:
            with self._lock, self.env.begin(write=True, db=self.log_db) as txn:
                for e in found:
                    txn.put(_key(e.index), self._record(e))
        self._stripped_to = hi
        return len(found)

    def _switched_generation(self) -> None:
        """After the install's commit: the staged generation is live; the old one is emptied (in a
        transaction of its own, after readers have moved to the new handles) and becomes the staging one."""
        old = self._snapshot_dbs()
        self._set_live(self._staging_dbs)
        self._staging_dbs = old
        self._generation = 1 - self._generation
        with self._stage_lock:
            self._stage_owner = None
        with self.env.begin(write=True) as txn:
            for db in old:
                txn.drop(db, delete=False)

    def _install_whole(self, txn: lmdb.Transaction, snap: Snapshot) -> None:
        where = f"node {self.node_id}: snapshot at index {snap.meta.index}"
        try:
            body = msgpack.unpackb(snap.data, strict_map_key=False)
            kvs, members = body["kv"], body["members"]
            records = [(bytes(k), bytes(r)) for k, r in kvs]
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
            raise CorruptionError(f"{where} cannot be decoded: {e}") from None
        for k, r in records:  # every record as it arrives
            kv_records.check(k, r, where)
        txn.drop(self.kv_db, delete=False)
        txn.drop(self.leases_db, delete=False)  # a snapshot of an earlier version carries no leases
        self._view(txn).load_sorted(records)
        self._write_members(txn, {int(k): v for k, v in members.items()})

    def _term_in(self, txn: lmdb.Transaction, index: int) -> int:
        """The term of entry `index` as `txn` sees the log (the compaction point included), not as the
        caches do: a snapshot builder's read transaction may be older than them."""
        raw = txn.get(b"compacted", db=self.meta_db)
        if raw is not None:
            c_idx, c_term, _ = msgpack.unpackb(raw)
            if index == c_idx:
                return int(c_term)
        if index == 0:
            return 0
        entry = txn.get(_key(index), db=self.log_db)
        if entry is None:
            raise StorageError(f"{self.file}: log entry {index} is missing")
        return self._decode(index, entry).term

    def compact(self, compact_to: int, compact_conf: ConfState) -> int:
        """A whole compaction at once (`start_compaction`, then every step): for tools and tests. The
        host runs the steps one by one on its I/O executor, so that its Ready transactions go between."""
        index = self.start_compaction(compact_to, compact_conf)
        while self.compaction_step():
            pass
        return index

    def start_compaction(self, compact_to: int, compact_conf: ConfState) -> int:
        """Record a snapshot point at the applied index and compact the log to `compact_to` (<= it), whose
        membership is `compact_conf`, in one small transaction. From its commit the log reads as
        compacted; the rows below the point, and the change history retention lets go, are deleted by
        `compaction_step` afterwards. The applied index is read under the store lock, which
        `save_and_apply` holds until its caches have moved, so it is exact whichever thread writes.
        No copy of the state machine is made (see `snapshot`). Returns the snapshot point."""
        with self._lock:
            with self.env.begin(write=True) as txn:
                # The applied index LMDB holds, not the buffer's: after a crash the node re-applies the log
                # from there, so no entry above it may go.
                applied, conf = self._durable_applied, self._durable_conf
                term = self._term_in(txn, applied)
                txn.put(b"snapmeta", msgpack.packb([applied, term, _conf_to_wire(conf), None]), db=self.meta_db)
                txn.delete(b"data", db=self.snap_db)
                compact_to = min(compact_to, applied)
                new_compacted = self._compacted
                if compact_to > self._compacted[0]:
                    c_term = self._term_in(txn, compact_to)
                    txn.put(b"compacted", msgpack.packb([compact_to, c_term, _conf_to_wire(compact_conf)]),
                            db=self.meta_db)
                    new_compacted = (compact_to, c_term, compact_conf)
                self.history.start_trim(txn, applied)
            self._compacted = new_compacted
            self._snap_point = applied
        return applied

    def compaction_step(self, max_rows: int = COMPACTION_STEP_ROWS) -> bool:
        """Delete about `max_rows` rows that the last `start_compaction` let go, in one transaction: log
        entries at or below the compaction point first, then history rows. Returns whether any are left.
        Rows a crash left behind (an interrupted compaction) go with the next compaction."""
        with self._lock:
            with self.env.begin(write=True) as txn:
                budget = max_rows - self._drop_compacted_prefix(txn, max_rows)
                if budget <= 0 or not self.history.trimming():
                    return budget <= 0
                view = self._view(txn)

                def superseded(key: bytes, revision: int) -> bool:
                    rec = view.get(key)
                    return rec is None or history.mod_revision_of(rec) != revision

                finished = self.history.trim_step(txn, budget, superseded)
            self.history.trimmed(finished)
            return not finished

    def _drop_compacted_prefix(self, txn: lmdb.Transaction, max_rows: int) -> int:
        """Delete up to `max_rows` log rows at or below the compaction point; how many went."""
        cur = txn.cursor(db=self.log_db)
        dropped = 0
        if cur.first():
            while dropped < max_rows and cur.key() and _U64.unpack(cur.key())[0] <= self._compacted[0]:
                if not cur.delete():
                    break
                dropped += 1
        return dropped

    # ------------------------------------------------------------------------------------------
    # Change history (history.py)
    # ------------------------------------------------------------------------------------------
    def take_damaged_history(self) -> list[int]:
        return self.history.take_damaged()

    def _compact_history_to(self, revision: int, index: int) -> int:
        return self.history.compact_to(revision, index)

    @property
    def history_retention(self) -> Retention:
        """How much history this node keeps (history.Retention; set by the host from its flags)."""
        return self.history.retention

    @history_retention.setter
    def history_retention(self, retention: Retention) -> None:
        self.history.retention = retention

    def history_floor(self) -> int:
        """The oldest revision whose events are all in this node's history."""
        return self.history.floor

    def history_events(self, start: int, end: int, limit: int = 1000) -> list[Event]:
        """Events with start <= revision <= end, in order (HistoryRows.events)."""
        return self.history.events(self.env, start, end, limit)

    # ------------------------------------------------------------------------------------------
    # Reads for the host and clients
    # ------------------------------------------------------------------------------------------
    def applied_index(self) -> int:
        """The newest entry applied (into the write-back buffer, or LMDB): what reads see."""
        return self._applied

    def durable_applied_index(self) -> int:
        """The applied index LMDB holds beside its data: where a restart re-applies the log from."""
        return self._durable_applied

    def applied_conf(self) -> ConfState:
        return self._applied_conf

    def snapshot_index(self) -> int:
        """The newest snapshot point: our own compaction's, or a snapshot installed from a leader."""
        return self._snap_point

    def compacted_index(self) -> int:
        return self._compacted[0]

    def hard_state(self) -> HardState:
        return self._hard

    def _read_members(self, txn: lmdb.Transaction) -> dict[int, bytes]:
        return {_U64.unpack(k)[0]: bytes(v) for k, v in txn.cursor(db=self._live_in(txn)[b"members"])}

    def load_members(self) -> dict[int, bytes]:
        with self.env.begin() as txn:
            return self._read_members(txn)

    def snapshot_members(self) -> dict[int, bytes]:
        return self.load_members()

    def _read_txn(self) -> tuple[dict[bytes, bytes | None], lmdb.Transaction]:
        """The buffer and a read transaction that agree: the buffer is taken first, so LMDB is as new
        as it or newer only by what the buffer holds itself (a flush empties the buffer after its commit).
        A snapshot install replaces both at once, so a read that overlaps one (on a follower far behind,
        rarely) waits it out."""
        while True:
            gen = self._install_gen
            buf = self._buf
            txn = self.env.begin()
            if gen % 2 == 0 and gen == self._install_gen:
                return buf, txn
            txn.abort()
            with self._install_lock:
                pass

    def get(self, key: bytes) -> KV | None:
        return self.get_at(key)[0]

    def get_at(self, key: bytes) -> tuple[KV | None, int]:
        """The key's record, seen through the write-back buffer over LMDB, and the applied index of the
        state it was read from: taken after the data, so a reply's applied index (and the session token
        made from it) is never older than the data it carries. Safe on any thread."""
        buf, txn = self._read_txn()
        with txn:
            kv = state_machine.get(Overlay(self._view(txn), buf), key)
            return kv, max(self._applied, self._applied_in(txn))

    def range(self, op: Range, limit_bytes: int = 0) -> RangeResult:
        return self.range_at(op, limit_bytes)[0]

    def range_at(self, op: Range, limit_bytes: int = 0) -> tuple[RangeResult, int]:
        """As `get_at`, for a range: the buffer and LMDB merged in key order (see `range_read`), the buffer
        copied at once, so the range sees whole commands. Safe on any thread."""
        buf, txn = self._read_txn()
        with txn:
            result = state_machine.range_read(Overlay(self._view(txn), buf.copy()), op, limit_bytes)
            return result, max(self._applied, self._applied_in(txn))

    def session_records(self) -> list[tuple[int, sessions.SessionRecord]]:
        """Every client session (sessions.py) as this node has applied them. Safe on any thread."""
        buf, txn = self._read_txn()
        with txn:
            return sessions.records(Overlay(self._view(txn), buf.copy()))

    def _applied_in(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(b"applied", db=self.meta_db)
        return int(msgpack.unpackb(raw)[0]) if raw is not None else 0

    def log_bytes(self) -> int:
        """Bytes the Raft log occupies in the environment (its LMDB pages), for size-based compaction."""
        with self.env.begin() as txn:
            return pages_bytes(txn.stat(self.log_db))

    def db_size(self) -> int:
        try:
            return os.path.getsize(self.file)
        except OSError:
            return 0

    def db_in_use(self) -> int:
        """Bytes of the data file its databases occupy: the main database and every named one this store
        holds a handle of (pages LMDB freed and will reuse are not counted; db_size() minus this is free)."""
        found = [v for v in vars(self).values() if isinstance(v, lmdb._Database)]
        found += [db for gen in getattr(self, "_generations", None) or () for db in gen]
        handles = list({id(db): db for db in found}.values())  # kv_db is one of a generation's handles
        with self.env.begin() as txn:
            stats = [self.env.stat()] + [txn.stat(db) for db in handles]
        return sum(pages_bytes(st) for st in stats)

    def close(self) -> None:
        self.env.close()
        self._dir_lock.release()
