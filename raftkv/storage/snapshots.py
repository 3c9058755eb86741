"""Snapshots as streams of records, so no copy of the whole state machine is ever held in memory.

A leader does not build a snapshot image: its `kv` and `members` sub-databases, as one LMDB read
transaction sees them, are the image. `SnapshotReader` walks that transaction's cursors and cuts the
records into pieces of about `chunk_bytes` (each with a CRC-32; the SHA-256 of all pieces and the record
count close the stream), on one thread of its own, so the leader's event loop never reads or encodes it.

A follower writes the pieces as they arrive into a staging file in its data directory (`SnapshotStage`),
verifying each piece's CRC and, at the end, the count and SHA-256: nothing of its own state is touched
while a stream is under way, so a stream that breaks or carries a corrupt piece is dropped, and the leader
retries. A complete stage becomes a token (`Snapshot.data` of the snapshot message handed to the core);
installing it (`install_staged`, inside the transaction that also moves the log's compaction point and the
applied index) empties those sub-databases and fills them from the file, piece by piece.

Records are copied verbatim, LMDB key and value as stored: the snapshot knows nothing of the record format
of the state machine, only which sub-databases make it up (`SNAPSHOT_DBS`)."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import msgpack

from ..core import SnapshotMeta
from .errors import CorruptionError, StorageError

SNAPSHOT_DBS = (b"members", b"kv")
"""The sub-databases a snapshot carries, in stream order. Each record travels as [db index, key, value]."""
STAGING_DIR = "snapshot-staging"
TOKEN_PREFIX = b"raftkv-staged-snapshot:"
_FRAME = struct.Struct(">II")  # length and CRC-32 of a piece in a staging file


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

    def __init__(self, env: lmdb.Environment, dbs: Sequence[Any], meta_of: Any, chunk_bytes: int) -> None:
        """`meta_of(txn)`: the snapshot's metadata (applied index, its term and membership) as `txn` sees
        them, so metadata and records come from the same point of the log."""
        self._txn = env.begin(buffers=False)
        try:
            self.meta: SnapshotMeta = meta_of(self._txn)
        except BaseException:
            self._txn.abort()
            raise
        self._dbs = dbs
        self._chunk = max(1, chunk_bytes)
        self._records = self._walk()
        self._sha = hashlib.sha256()
        self.count = 0
        """Records handed out so far (all of them, once `next_piece` has returned None)."""

    def _walk(self) -> Iterator[tuple[int, bytes, bytes]]:
        for i, db in enumerate(self._dbs):
            for k, v in self._txn.cursor(db=db):
                yield i, k, v

    def next_piece(self) -> SnapshotPiece | None:
        """The next piece of about `chunk_bytes` (a single larger record goes alone), or None at the end."""
        flat: list[Any] = []
        size = 0
        for db, k, v in self._records:
            flat += (db, k, v)
            size += len(k) + len(v) + 8
            if size >= self._chunk:
                break
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
    """A snapshot arriving from a leader, written to a file of its own as it comes and verified piece by
    piece. Until `finish` has checked the whole, it is nothing but a file; `abort` removes it."""

    def __init__(self, directory: Path, meta: SnapshotMeta) -> None:
        directory.mkdir(exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"snap-{meta.index}-{meta.term}-", suffix=".staging", dir=directory)
        self.path = Path(name)
        self.meta = meta
        self._file = os.fdopen(fd, "wb")
        self._sha = hashlib.sha256()
        self.count = 0
        self.bytes = 0
        self.pieces = 0

    def add(self, data: bytes, crc: int) -> None:
        if zlib.crc32(data) != crc:
            raise SnapshotStreamError(f"piece {self.pieces} of the snapshot at index {self.meta.index} fails its "
                                      "checksum")
        try:
            flat = msgpack.unpackb(data, use_list=True)
        except (ValueError, msgpack.UnpackException) as e:
            raise SnapshotStreamError(f"piece {self.pieces} of the snapshot at index {self.meta.index} cannot be "
                                      f"decoded: {e}") from None
        if not isinstance(flat, list) or len(flat) % 3 or any(
                not isinstance(db, int) or not 0 <= db < len(SNAPSHOT_DBS) for db in flat[::3]):
            raise SnapshotStreamError(f"piece {self.pieces} of the snapshot at index {self.meta.index} is not a "
                                      "list of records")
        self._file.write(_FRAME.pack(len(data), crc))
        self._file.write(data)
        self._sha.update(data)
        self.count += len(flat) // 3
        self.bytes += len(data)
        self.pieces += 1

    def finish(self, records: int, sha256: bytes) -> bytes:
        """Check the whole against the sender's count and digest; returns the token that names it."""
        self._file.close()
        if records != self.count or sha256 != self._sha.digest():
            raise SnapshotStreamError(
                f"the snapshot at index {self.meta.index} does not check out: {self.count} records received, "
                f"{records} sent; SHA-256 {'matches' if sha256 == self._sha.digest() else 'differs'}")
        return TOKEN_PREFIX + self.path.name.encode()

    def abort(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


def staged_path(directory: Path, token: bytes) -> Path:
    name = token[len(TOKEN_PREFIX):].decode(errors="replace")
    if not is_staged(token) or "/" in name or not name.endswith(".staging"):
        raise StorageError(f"not a staged snapshot: {token[:80]!r}")
    return directory / name


def install_staged(txn: lmdb.Transaction, dbs: Sequence[Any], path: Path, index: int) -> int:
    """Replace the snapshot's sub-databases with the staged records, inside `txn` (the caller's write
    transaction, which also records the snapshot's place in the log). Reads the file a piece at a time and
    checks each piece again (the file has sat on disk since it was verified). Returns the record count."""
    for db in dbs:
        txn.drop(db, delete=False)
    cursors = [txn.cursor(db=db) for db in dbs]
    count = 0
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; the error names the file
    except OSError as e:
        raise StorageError(f"{path}: cannot read the staged snapshot at index {index}: {e}") from None
    with f:
        while head := f.read(_FRAME.size):
            n, crc = _FRAME.unpack(head) if len(head) == _FRAME.size else (-1, 0)
            data = f.read(n) if n >= 0 else b""
            if n < 0 or len(data) != n or zlib.crc32(data) != crc:
                raise CorruptionError(f"{path}: the staged snapshot at index {index} fails its checksum")
            flat = msgpack.unpackb(data, use_list=True)
            i = 0
            while i < len(flat):
                db = flat[i]
                pairs = []
                while i < len(flat) and flat[i] == db:
                    pairs.append((flat[i + 1], flat[i + 2]))
                    i += 3
                # Keys come in each sub-database's order, so they append (full pages, no searching);
                # one that does not is a stream that was not cut from one sorted cursor.
                _, added = cursors[db].putmulti(pairs, append=True)
                if added != len(pairs):
                    raise CorruptionError(f"{path}: the staged snapshot at index {index} has records out of order")
                count += len(pairs)
    return count


def clear_staging(data_dir: Path) -> None:
    """Remove what streams left behind (a node stopped while receiving one)."""
    shutil.rmtree(data_dir / STAGING_DIR, ignore_errors=True)
