"""Snapshots as streams of records, so no copy of the whole state machine is ever held in memory.

A leader does not build a snapshot image: its `kv` and `members` sub-databases, as one LMDB read
transaction sees them, are the image. `SnapshotReader` walks that transaction's cursors and cuts the
records into pieces of about `chunk_bytes` (each with a CRC-32; the SHA-256 of all pieces and the record
count close the stream), on one thread of its own, so the leader's event loop never reads or encodes it.

A follower keeps two generations of those sub-databases (`generation_names`): the live one, and one to
stage into. It writes the pieces as they arrive into the staging generation, a bounded transaction per
piece (`SnapshotStage`), verifying each piece's CRC and, at the end, the count and SHA-256: nothing of the
live state is touched while a stream is under way, so a stream that breaks or carries a corrupt piece is
dropped, and the leader retries. A complete stage becomes a token (`Snapshot.data` of the snapshot message
handed to the core); installing it is one small transaction that switches the live generation and moves
the log's compaction point and the applied index (the store's `_install`), so memory on both sides holds a
few pieces whatever the data size, and the install takes no time.

Records are copied verbatim, LMDB key and value as stored: the snapshot knows nothing of the record format
of the state machine, only which sub-databases make it up (`SNAPSHOT_DBS`)."""

from __future__ import annotations

import hashlib
import itertools
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import lmdb
import msgpack

from ..core import SnapshotMeta
from . import kv_records
from .errors import CorruptionError

SNAPSHOT_DBS = (b"members", b"kv", b"leases")
"""The sub-databases a snapshot carries, in stream order. Each record travels as [db index, key, value].
`leases` (leases.py) was added last, so the indexes of the others did not change."""
TOKEN_PREFIX = b"raftkv-staged-snapshot:"


def check_kv_pair(key: bytes, value: bytes, where: str) -> None:
    """One LMDB pair of `kv` checked against its seals (a plain record, or a bucket and each record in it):
    a corrupted record is never sent, nor installed (kv_records.py)."""
    if len(key) < kv_records.BUCKET_THRESHOLD:
        kv_records.check(key, value, where)
        return
    for full_key, record in kv_records.open_bucket(key, value, where):
        kv_records.check(full_key, record, where)


def _no_check(key: bytes, value: bytes, where: str) -> None:
    return None


CHECKS = {b"kv": check_kv_pair}
"""How the pairs of each sub-database are verified, when its records carry checksums."""


class SnapshotStreamError(ValueError):
    """A piece or the end of a snapshot stream does not check out; the stream is refused."""


@dataclass(slots=True, frozen=True)
class SnapshotPiece:
    data: bytes
    crc: int


def is_staged(data: bytes) -> bool:
    return data.startswith(TOKEN_PREFIX)


class SnapshotReader:
    """The state machine of one read transaction, as pieces. Every method must run on one thread (the
    transaction's); `close` ends the transaction."""

    def __init__(self, env: lmdb.Environment, dbs_of: Callable[[lmdb.Transaction], Sequence[Any]],
                 meta_of: Callable[[lmdb.Transaction], SnapshotMeta], chunk_bytes: int, where: str) -> None:
        """`dbs_of(txn)`: the live sub-databases as `txn` sees them, as SNAPSHOT_DBS; `meta_of(txn)`: the
        snapshot's metadata (applied index, its term and membership), so metadata and records come from
        the same point of the log; `where` names the node and file in a corruption report."""
        self._txn = env.begin(buffers=False)
        try:
            self.meta: SnapshotMeta = meta_of(self._txn)
            self._dbs = dbs_of(self._txn)
        except BaseException:
            self._txn.abort()
            raise
        self._where = where
        self._chunk = max(1, chunk_bytes)
        self._records = self._walk()
        self._held: tuple[tuple[int, bytes, bytes], ...] = ()
        self._sha = hashlib.sha256()
        self.count = 0
        """Records handed out so far (all of them, once `next_piece` has returned None)."""

    def _walk(self) -> Iterator[tuple[int, bytes, bytes]]:
        for i, db in enumerate(self._dbs):
            check = CHECKS.get(SNAPSHOT_DBS[i], _no_check)
            for k, v in self._txn.cursor(db=db):
                check(k, v, self._where)
                yield i, k, v

    def next_piece(self) -> SnapshotPiece | None:
        """The next piece, at most `chunk_bytes` of records (a single larger record goes alone), or None at
        the end. CorruptionError if a record fails its checksum."""
        flat: list[Any] = []
        size = 0
        held, self._held = self._held, ()
        for db, k, v in itertools.chain(held, self._records):
            n = len(k) + len(v) + 8
            if flat and size + n > self._chunk:
                self._held = ((db, k, v),)  # the first record of the next piece
                break
            flat += (db, k, v)
            size += n
        if not flat:
            return None
        self.count += len(flat) // 3
        data = msgpack.packb(flat, use_bin_type=True)
        self._sha.update(data)
        return SnapshotPiece(data, zlib.crc32(data))

    def digest(self) -> bytes:
        """SHA-256 of every piece handed out, in order."""
        return self._sha.digest()

    def close(self) -> None:
        self._txn.abort()


class SnapshotStage:
    """A snapshot arriving from a leader, written as it comes into the other generation's sub-databases
    (`generation_names`), each piece verified and then written in a transaction of its own, so memory
    holds one piece. Until `finish` has checked the whole, the live state machine knows nothing of it."""

    def __init__(self, env: lmdb.Environment, dbs: Sequence[Any], meta: SnapshotMeta, where: str,
                 release: Callable[[], None], complete: Callable[[bytes], None]) -> None:
        """`dbs`: the staging sub-databases, as SNAPSHOT_DBS, emptied now (of an earlier stage, or of the
        generation the last install left); `release`: called if the stage is given up; `complete(token)`
        once it checked out whole."""
        self.env = env
        self.dbs = dbs
        self.meta = meta
        self._where = f"{where}: snapshot at index {meta.index}"
        self._release = release
        self._complete = complete
        self._sha = hashlib.sha256()
        self.count = 0
        self.pieces = 0
        with env.begin(write=True) as txn:
            for db in dbs:
                txn.drop(db, delete=False)

    def add(self, data: bytes, crc: int) -> None:
        where = f"piece {self.pieces} of the snapshot at index {self.meta.index}"
        if zlib.crc32(data) != crc:
            raise SnapshotStreamError(f"{where} fails its checksum")
        try:
            flat = msgpack.unpackb(data, use_list=True)
        except (ValueError, msgpack.UnpackException) as e:
            raise SnapshotStreamError(f"{where} cannot be decoded: {e}") from None
        if not isinstance(flat, list) or len(flat) % 3 or any(
                not isinstance(db, int) or not 0 <= db < len(self.dbs) for db in flat[::3]) or any(
                not isinstance(x, bytes) for i, x in enumerate(flat) if i % 3):
            raise SnapshotStreamError(f"{where} is not a list of records")
        try:
            for i in range(0, len(flat), 3):
                CHECKS.get(SNAPSHOT_DBS[flat[i]], _no_check)(flat[i + 1], flat[i + 2], self._where)
        except CorruptionError as e:
            raise SnapshotStreamError(f"{where}: {e}") from None
        with self.env.begin(write=True) as txn:
            i = 0
            while i < len(flat):
                db = flat[i]
                pairs = []
                while i < len(flat) and flat[i] == db:
                    pairs.append((flat[i + 1], flat[i + 2]))
                    i += 3
                # Keys come in each sub-database's order, so they append (full pages, no searching); one
                # that does not is a stream that was not cut from one sorted cursor.
                try:
                    _, added = txn.cursor(db=self.dbs[db]).putmulti(pairs, append=True)
                except lmdb.BadValsizeError as e:  # an empty or oversized key: not what a leader sends
                    raise SnapshotStreamError(f"{where} has a record LMDB cannot hold: {e}") from None
                if added != len(pairs):
                    raise SnapshotStreamError(f"{where} has records out of order")
        self._sha.update(data)
        self.count += len(flat) // 3
        self.pieces += 1

    def finish(self, records: int, sha256: bytes) -> bytes:
        """Check the whole against the sender's count and digest; returns the token that names it."""
        if records != self.count or sha256 != self._sha.digest():
            raise SnapshotStreamError(
                f"the snapshot at index {self.meta.index} does not check out: {self.count} records received, "
                f"{records} sent; SHA-256 {'matches' if sha256 == self._sha.digest() else 'differs'}")
        token = TOKEN_PREFIX + b"%d:%d:%s" % (self.meta.index, self.meta.term, os.urandom(8).hex().encode())
        self._complete(token)
        return token

    def abort(self) -> None:
        """Give the stage up; what it wrote is emptied by the next stage (or on the next start)."""
        self._release()


def generation_names(gen: int) -> list[bytes]:
    """The sub-databases of the state machine in generation `gen` (0 or 1), as SNAPSHOT_DBS. A snapshot
    is staged into the generation not in use and installed by switching to it (LMDB cannot rename a
    sub-database), so installing copies nothing, whatever the data size."""
    return [name if gen == 0 else name + b"~1" for name in SNAPSHOT_DBS]
