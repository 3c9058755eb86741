"""Storage errors. Each message is one line naming the file and what is wrong: the server prints it and
refuses to start rather than repairing anything silently."""

from __future__ import annotations

import errno
import os

import lmdb

_NOSPACE_TEXTS = tuple(os.strerror(code) for code in (errno.ENOSPC, errno.EDQUOT))


class StorageError(Exception):
    pass


class CorruptionError(StorageError):
    """Data on disk failed its checksum."""


class ForeignDataError(StorageError):
    """The data directory belongs to another node or cluster, or to an unknown format version."""


class TruncatedError(CorruptionError):
    """data.mdb is shorter than its own meta page says, or empty where data was kept."""


class DataDirInUse(StorageError):
    """Another process holds this data directory."""


class CommandFailed(ValueError):
    """A committed command that cannot be applied (the same on every node): it fails alone, with this as
    its result, and its entry still counts as applied."""


LMDB_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.VersionMismatchError)
"""What LMDB says of a file whose pages do not hold together (MDB_CORRUPTED, MDB_PAGE_NOTFOUND) or that is
not an LMDB file of this version: damaged data, never worth a restart."""


def is_damage(err: BaseException) -> bool:
    """Damaged data on disk, whoever noticed: raftkv's checksums (CorruptionError) or LMDB itself."""
    return isinstance(err, (CorruptionError, *LMDB_DAMAGE))


def opening_error(where: str, err: lmdb.Error) -> StorageError:
    """An LMDB error met while opening a store, in one line: damaged data (CorruptionError) when LMDB says
    its pages do not hold together, or a transaction failed on them at once (MDB_BAD_TXN right after
    opening follows a failed read); else a storage fault a restart may cure (a full or failing disk)."""
    if isinstance(err, (*LMDB_DAMAGE, lmdb.BadTxnError)):
        return CorruptionError(f"{where}: LMDB reports damaged data ({err}); restore the directory from a "
                               "backup or replace this member")
    return StorageError(f"{where}: cannot read the store: {err}")


class LeaseNotFound(CommandFailed):
    def __init__(self, lease_id: int) -> None:
        super().__init__(f"lease {lease_id} not found (expired or revoked, or never granted)")
        self.lease_id = lease_id


class LeaseExists(CommandFailed):
    def __init__(self, lease_id: int) -> None:
        super().__init__(f"lease {lease_id} already exists")
        self.lease_id = lease_id


class HistoryOutOfRange(Exception):
    """Events before `floor` were asked for; this node no longer has (or never had) them."""

    def __init__(self, wanted: int, floor: int) -> None:
        super().__init__(f"revision {wanted} is compacted: the oldest revision in this node's history is {floor}")
        self.wanted = wanted
        self.floor = floor


def is_nospace(err: BaseException) -> bool:
    """A full disk or a full LMDB map (--map-size): what the NOSPACE alarm waits out, as opposed to a
    failing disk."""
    if isinstance(err, lmdb.MapFullError):
        return True
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    # py-lmdb reports a failed write as lmdb.DiskError / lmdb.Error carrying only strerror's text.
    return isinstance(err, lmdb.Error) and any(t in str(err) for t in _NOSPACE_TEXTS)


def is_storage_fault(err: BaseException) -> bool:
    """Data or disk trouble (as opposed to a bug): reported in one line, without a traceback."""
    return isinstance(err, (StorageError, lmdb.Error, OSError))


def is_map_full(err: BaseException) -> bool:
    """LMDB's map (--map-size) is full: freeing disk space does not help, a larger map does."""
    return isinstance(err, lmdb.MapFullError)


class SessionUnknown(ValueError):
    """A numbered write for a client session the state machine does not hold (expired, or never
    registered): whether an earlier try of it was applied cannot be told (storage/sessions.py)."""


class ResultNotKept(ValueError):
    """A retried numbered write that was applied before, whose result is no longer (or was never) kept."""


class TooManySessions(ValueError):
    """Registering one more client session would pass the state machine's bound."""
