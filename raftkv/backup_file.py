"""The backup file: a point-in-time snapshot of one member's state machine, as `kv snapshot save` writes it
and `kv snapshot status` / `raftkv restore` read it.

The bytes of the file are exactly the bytes the Maintenance service streams (api/maintenance_service.py),
so the server computes the seal as it sends and the client checks it as it writes:

    MAGIC
    frame H  header: msgpack {revision, term, cluster_id, voters, learners, dbs, node, created_unix}
    frame P  a piece of records (as snapshots.SnapshotReader cuts them): u32 crc32 || msgpack
             [db index, key, value, db index, key, value, ...], db index into the header's `dbs`
    ...
    frame E  end: msgpack {records, pieces}
    frame S  seal: the SHA-256 of every byte before this frame (32 bytes)

A frame is its kind (one byte), its payload length (u32, big-endian) and its payload. Records are LMDB
pairs copied verbatim from the member's sub-databases (`kv` records keep their own crc32 seals,
kv_records.py), so a restore copies them back without knowing their format. The revision is the member's
applied index as LMDB held it in the read transaction the records come from.

A file that fails any of this (its seal, a piece's crc, its framing, a truncated end) is refused as a
whole: `BackupError`, whose message is one line naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

MAGIC = b"RAFTKV-BACKUP/1\n"
_FRAME = struct.Struct(">cI")
_CRC = struct.Struct(">I")
MAX_FRAME = 64 << 20
BUCKET_THRESHOLD = 480
"""kv_records.BUCKET_THRESHOLD: a `kv` key this long is a bucket of several keys (a test keeps them equal)."""
SEAL_BYTES = 4


class BackupError(ValueError):
    """The file is not a whole, intact backup; the message is one line for the operator."""


@dataclass(slots=True)
class BackupHeader:
    revision: int
    term: int
    cluster_id: bytes
    voters: list[int]
    learners: list[int]
    dbs: list[bytes]
    node: int
    created_unix: float

    def encode(self) -> bytes:
        return msgpack.packb({"revision": self.revision, "term": self.term, "cluster_id": self.cluster_id,
                              "voters": self.voters, "learners": self.learners, "dbs": self.dbs,
                              "node": self.node, "created_unix": self.created_unix}, use_bin_type=True)

    @staticmethod
    def decode(data: bytes) -> BackupHeader:
        d = msgpack.unpackb(data)
        return BackupHeader(int(d["revision"]), int(d["term"]), bytes(d["cluster_id"]),
                            [int(v) for v in d["voters"]], [int(v) for v in d["learners"]],
                            [bytes(n) for n in d["dbs"]], int(d["node"]), float(d["created_unix"]))


class BackupWriter:
    """Frames for a backup stream, with the running SHA-256 the seal closes it with."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.records = 0
        self.pieces = 0

    def _frame(self, kind: bytes, payload: bytes) -> bytes:
        data = _FRAME.pack(kind, len(payload)) + payload
        self._sha.update(data)
        return data

    def header(self, h: BackupHeader) -> bytes:
        self._sha.update(MAGIC)
        return MAGIC + self._frame(b"H", h.encode())

    def piece(self, data: bytes, crc: int, records: int) -> bytes:
        self.records += records
        self.pieces += 1
        return self._frame(b"P", _CRC.pack(crc) + data)

    def end(self) -> bytes:
        """The end frame and the seal: the last bytes of the file."""
        end = self._frame(b"E", msgpack.packb({"records": self.records, "pieces": self.pieces}))
        digest = self._sha.digest()
        return end + _FRAME.pack(b"S", len(digest)) + digest


@dataclass(slots=True)
class BackupSummary:
    header: BackupHeader
    sha256: str
    size: int
    records: int
    keys: int
    members: dict[int, str]
    """Member id -> address, as the member registry in the file holds it."""


def file_sha256(path: str | Path) -> tuple[bytes, bytes, int]:
    """(SHA-256 of everything before the seal frame, the seal's digest, the file's size); BackupError if
    the file is too short to hold a seal or cannot be read."""
    p = Path(path)
    try:
        size = p.stat().st_size
        tail = _FRAME.size + 32
        if size < len(MAGIC) + tail:
            raise BackupError(f"{p}: {size} bytes is too short for a backup (truncated?)")
        sha = hashlib.sha256()
        with open(p, "rb") as f:
            left = size - tail
            while left:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    raise BackupError(f"{p}: the file shrank while being read")
                sha.update(chunk)
                left -= len(chunk)
            seal = f.read(tail)
    except OSError as e:
        raise BackupError(f"{p}: cannot read the file: {e.strerror or e}") from None
    kind, n = _FRAME.unpack_from(seal)
    if kind != b"S" or n != 32:
        raise BackupError(f"{p}: no seal at the end of the file: it is truncated or not a raftkv backup")
    return sha.digest(), seal[_FRAME.size:], size


def _frames(f: BinaryIO, where: str) -> Iterator[tuple[bytes, bytes]]:
    while True:
        head = f.read(_FRAME.size)
        if not head:
            return
        if len(head) < _FRAME.size:
            raise BackupError(f"{where}: a frame is cut short (truncated file)")
        kind, n = _FRAME.unpack(head)
        if n > MAX_FRAME:
            raise BackupError(f"{where}: a frame claims {n} bytes (damaged file)")
        payload = f.read(n)
        if len(payload) < n:
            raise BackupError(f"{where}: a frame is cut short (truncated file)")
        yield kind, payload


def read_backup(path: str | Path) -> tuple[BackupHeader, Iterator[list[tuple[int, bytes, bytes]]]]:
    """Check the seal over the whole file, then read it: the header and an iterator of pieces, each a list
    of (db index, key, value) records in the order they were cut (keys sorted within each db). Every
    piece's crc is checked as it is read; the iterator raises BackupError on anything wrong, including an
    end frame that does not match what came before. Nothing should be kept from a read that raised."""
    p = Path(path)
    digest, seal, _ = file_sha256(p)
    if digest != seal:
        raise BackupError(f"{p}: fails its SHA-256 (the file was damaged or altered): refusing it")
    f = open(p, "rb")  # noqa: SIM115 - closed by the piece iterator
    try:
        if f.read(len(MAGIC)) != MAGIC:
            raise BackupError(f"{p}: not a raftkv backup (no {MAGIC.strip().decode()} header)")
        frames = _frames(f, str(p))
        kind, payload = next(frames, (b"", b""))
        if kind != b"H":
            raise BackupError(f"{p}: no header frame")
        try:
            header = BackupHeader.decode(payload)
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
            raise BackupError(f"{p}: the header cannot be decoded: {e}") from None
    except BaseException:
        f.close()
        raise
    return header, _pieces(f, frames, header, str(p))


def _pieces(f: BinaryIO, frames: Iterator[tuple[bytes, bytes]], header: BackupHeader,
            where: str) -> Iterator[list[tuple[int, bytes, bytes]]]:
    records = pieces = 0
    ended = False
    with f:
        for kind, payload in frames:
            if kind == b"P" and not ended:
                if len(payload) < _CRC.size or zlib.crc32(payload[_CRC.size:]) != _CRC.unpack_from(payload)[0]:
                    raise BackupError(f"{where}: piece {pieces} fails its checksum")
                try:
                    flat = msgpack.unpackb(payload[_CRC.size:], use_list=True)
                except (ValueError, msgpack.UnpackException) as e:
                    raise BackupError(f"{where}: piece {pieces} cannot be decoded: {e}") from None
                if not isinstance(flat, list) or len(flat) % 3 or any(
                        not isinstance(d, int) or not 0 <= d < len(header.dbs) for d in flat[::3]):
                    raise BackupError(f"{where}: piece {pieces} is not a list of records")
                out = [(flat[i], bytes(flat[i + 1]), bytes(flat[i + 2])) for i in range(0, len(flat), 3)]
                records += len(out)
                pieces += 1
                yield out
            elif kind == b"E" and not ended:
                end = msgpack.unpackb(payload)
                if end.get("records") != records or end.get("pieces") != pieces:
                    raise BackupError(f"{where}: the end frame counts {end.get('records')} records, the file "
                                      f"holds {records}")
                ended = True
            elif kind == b"S" and ended:
                return
            else:
                raise BackupError(f"{where}: unexpected frame {kind!r} (damaged file)")
    raise BackupError(f"{where}: the file ends before its end frame (truncated)")


def keys_in(key: bytes, value: bytes) -> int:
    """How many client keys one LMDB pair of `kv` holds: 1, or a bucket's count (kv_records.py)."""
    if len(key) < BUCKET_THRESHOLD:
        return 1
    try:
        return len(msgpack.unpackb(value[SEAL_BYTES:]))
    except (ValueError, TypeError, msgpack.UnpackException):
        raise BackupError(f"a bucket of keys starting with {key[:40]!r} cannot be decoded") from None


def summarize(path: str | Path) -> BackupSummary:
    """Verify the whole file and count what it holds (`kv snapshot status`)."""
    header, pieces = read_backup(path)
    digest, _, size = file_sha256(path)
    records = keys = 0
    members: dict[int, str] = {}
    kv_index = header.dbs.index(b"kv") if b"kv" in header.dbs else -1
    members_index = header.dbs.index(b"members") if b"members" in header.dbs else -1
    for piece in pieces:
        for db, k, v in piece:
            records += 1
            if db == kv_index:
                keys += keys_in(k, v)
            elif db == members_index and len(k) == 8:
                nid = struct.unpack(">Q", k)[0]
                if nid:
                    try:
                        info: Any = msgpack.unpackb(v)
                        members[nid] = str(info.get("address", ""))
                    except (ValueError, AttributeError, msgpack.UnpackException):
                        members[nid] = "?"
    return BackupSummary(header, digest.hex(), size, records, keys, members)
