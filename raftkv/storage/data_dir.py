"""Checks on a data directory made before LMDB opens it.

- **One process per directory.** Two processes serving one node's data would each believe they hold its
  log and vote. `DataDirLock` takes an exclusive, non-blocking flock on `raftkv.lock` for the process'
  lifetime (the kernel drops it when the process dies, kill -9 included) and writes its pid there, so
  the refusal can name the holder.
- **No truncated file.** LMDB maps data.mdb and trusts its meta page: if the file is shorter than the
  meta page says, the first read past its end kills the process with SIGBUS and no message. So
  `check_data_file` reads the two meta pages itself (LMDB's format: a 16-byte page header, then
  MDB_meta: magic 0xBEEFC0DE, version, address, map size, the free and main databases' MDB_db records,
  last page number, transaction id), takes the newer valid one and refuses a file shorter than
  (last page + 1) x page size. An empty data.mdb beside LMDB's lock file or ours is refused too: it was
  truncated (or its creation cut short), and opening it would found a fresh, empty store.
"""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

from .errors import CorruptionError, DataDirInUse, StorageError, TruncatedError

LOCK_FILE = "raftkv.lock"
DATA_FILE = "data.mdb"
LMDB_LOCK_FILE = "lock.mdb"

MDB_MAGIC = 0xBEEFC0DE
MDB_DATA_VERSION = 1
PAGE_HEADER = 16  # pgno (8), pad (2), flags (2), lower/upper (2 + 2)
# MDB_meta after the page header: magic, version (u32 each), address, map size (u64 each), then two MDB_db
# records of 48 bytes (md_pad u32, flags u16, depth u16, five u64), then last page and txnid (u64 each).
_MAGIC_VERSION = struct.Struct("<II")
_FREE_DB_PAD = struct.Struct("<I")  # the free database's md_pad holds the page size
_LAST_PG_TXNID = struct.Struct("<QQ")
_MAGIC_AT, _PAD_AT, _LAST_AT = PAGE_HEADER, PAGE_HEADER + 24, PAGE_HEADER + 24 + 2 * 48
META_BYTES = _LAST_AT + _LAST_PG_TXNID.size


class DataDirLock:
    """An exclusive flock on the directory's lock file, held until `release()` or the process ends."""

    def __init__(self, path: Path) -> None:
        self.file = path / LOCK_FILE
        self.existed = self.file.exists()
        try:
            self._fd: int | None = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StorageError(f"{self.file}: cannot open the lock file: {e.strerror}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder()
            self.release()
            raise DataDirInUse(f"data directory {path} is in use by another process (pid {holder})") from None
        except OSError as e:
            self.release()
            raise StorageError(f"{self.file}: cannot lock the data directory: {e.strerror}") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def _holder(self) -> str:
        try:
            return os.pread(self._fd, 32, 0).decode().strip() or "unknown"  # type: ignore[arg-type]
        except (OSError, UnicodeDecodeError):
            return "unknown"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def check_data_file(path: Path, lock_file_existed: bool) -> None:
    """Refuse a data.mdb that LMDB would map past its end (TruncatedError), or that is not LMDB's.
    `lock_file_existed`: raftkv.lock was there before this process created it."""
    file = path / DATA_FILE
    try:
        actual = file.stat().st_size
    except FileNotFoundError:
        return  # a new store
    if actual == 0:
        if (path / LMDB_LOCK_FILE).exists() or lock_file_existed:
            raise TruncatedError(f"{file}: is empty (0 bytes) in a data directory that was in use: it was "
                                 "truncated or wiped; restore the directory from a backup or replace this member")
        return
    with open(file, "rb") as f:
        head = f.read(META_BYTES)
        metas = [_meta(head)]
        psize = metas[0][0] if metas[0] is not None else 0
        if psize:
            f.seek(psize)
            metas.append(_meta(f.read(META_BYTES)))
    valid = [m for m in metas if m is not None]
    if not valid:
        raise CorruptionError(f"{file}: no valid LMDB meta page (magic {MDB_MAGIC:#x} not found): the file is "
                              "damaged or not raftkv's; restore the directory from a backup or replace this member")
    page_size, last_pg, txnid = max(valid, key=lambda m: m[2])
    expected = (last_pg + 1) * page_size
    if actual < expected:
        raise TruncatedError(f"{file}: truncated: expected at least {expected} bytes (page {last_pg} of "
                             f"{page_size} bytes, transaction {txnid}), found {actual}; restore the directory "
                             "from a backup or replace this member")


def _meta(page: bytes) -> tuple[int, int, int] | None:
    """(page size, last page, txnid) of one meta page, or None if it is not a valid one."""
    if len(page) < META_BYTES:
        return None
    magic, version = _MAGIC_VERSION.unpack_from(page, _MAGIC_AT)
    if magic != MDB_MAGIC or version != MDB_DATA_VERSION:
        return None
    (page_size,) = _FREE_DB_PAD.unpack_from(page, _PAD_AT)
    if page_size < 512 or page_size & (page_size - 1):
        return None
    last_pg, txnid = _LAST_PG_TXNID.unpack_from(page, _LAST_AT)
    return page_size, last_pg, txnid


def pages_bytes(stat: dict[str, int]) -> int:
    """Bytes of the pages an LMDB database occupies, from its `stat()`."""
    return stat["psize"] * (stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"])
