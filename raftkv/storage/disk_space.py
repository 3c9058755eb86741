"""Room on the data directory's filesystem: a headroom check before each write, and a reserve file.

A full disk must not stop a node from taking the writes that free space (deletes), nor make LMDB write
into a filesystem with no room at all: a full ext4 then fails now and then not the write with ENOSPC but
the fsync with EIO, after which nothing is known of what reached the disk and the node must stop.

- **Headroom.** Before each synced transaction the I/O thread checks (statvfs, a cheap system call) that
  the filesystem has at least HEADROOM_BYTES free beyond what the transaction may need. When it has not,
  the transaction is not tried: the host sees ENOSPC and raises the NOSPACE alarm, exactly as if LMDB had
  reported it. So LMDB is asked to write only where room is left, and the EIO path becomes rare.
- **The reserve.** Each data directory keeps a file of `--disk-reserve-bytes` (RESERVE_FILE), allocated
  with fallocate at start when space allows. When the headroom check first fails, the reserve is deleted,
  which gives the node back that many bytes for itself: the transaction that hit the limit goes through,
  and then the delete-only traffic that the NOSPACE alarm still takes. The alarm holds until the
  filesystem has room again (`restore`): the reserve is re-created, and HEADROOM_BYTES more remain free.

Works on the I/O thread (or before the loop starts): no asyncio here.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

RESERVE_FILE = "raftkv.reserve"
HEADROOM_BYTES = 1 << 20
"""Left free beside every write: the filesystem's own metadata and LMDB's copied pages need a little."""
CLEAR_HEADROOM_BYTES = 2 << 20
"""Free beyond the re-created reserve before the alarm clears (more than HEADROOM_BYTES: no flapping)."""


class DiskSpace:
    """The free space of one data directory's filesystem, and that directory's reserve file."""

    def __init__(self, data_dir: str | Path, reserve_bytes: int) -> None:
        self.dir = Path(data_dir)
        self.reserve = self.dir / RESERVE_FILE
        self.reserve_bytes = reserve_bytes
        self.held = False
        """Whether the reserve file exists at its full size."""
        self.low = ""
        """Why the reserve was released (set on the I/O thread, read by the host); "" while it was not."""

    def free_bytes(self) -> int:
        st = os.statvfs(self.dir)
        return st.f_bavail * st.f_frsize

    def create_reserve(self) -> bool:
        """Allocate the reserve file if it is missing (or has another size); False when there is no room
        for it now (the node runs on without one, and tries again whenever its NOSPACE alarm would clear).
        With a reserve of 0 bytes a file left from an earlier run is removed."""
        if self.reserve_bytes <= 0:
            self._remove()
            return True
        try:
            if self.reserve.stat().st_size == self.reserve_bytes:
                self.held = True
                return True
        except FileNotFoundError:
            pass
        self._remove()
        if self.free_bytes() < self.reserve_bytes + HEADROOM_BYTES:
            return False
        tmp = self.reserve.with_name(RESERVE_FILE + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.reserve)
            self._sync_dir()
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                return False
            raise
        self.held = True
        return True

    def ensure_room(self, need: int) -> None:
        """Before a synced transaction that may write up to `need` bytes: raise ENOSPC unless HEADROOM_BYTES
        more stay free, releasing the reserve first if it is held."""
        want = need + HEADROOM_BYTES
        free = self.free_bytes()
        if free >= want:
            return
        if self.held:
            self._remove()
            self.low = (f"{free} bytes were free on the data directory's filesystem; released the "
                        f"{self.reserve_bytes}-byte reserve {self.reserve}")
            free = self.free_bytes()
            if free >= want:
                return
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {free} bytes free on the filesystem of "
                                    f"{self.dir}, under the {want} a write needs with its headroom")

    def restore(self) -> bool:
        """Whether the filesystem has room again: the reserve re-created (when one is configured) and
        CLEAR_HEADROOM_BYTES free beyond it. Then the NOSPACE alarm may clear."""
        if self.free_bytes() < self.reserve_bytes + CLEAR_HEADROOM_BYTES:
            return False
        if self.reserve_bytes > 0 and not self.create_reserve():
            return False
        self.low = ""
        return True

    def _remove(self) -> None:
        self.held = False
        try:
            self.reserve.unlink()
        except FileNotFoundError:
            return
        # Committing the directory lets ext4 hand the freed blocks out at once (it keeps blocks freed in a
        # running journal transaction from being reused until that transaction commits).
        self._sync_dir()

    def _sync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
