"""A small filesystem of its own for each node's data, so one node's disk can really be filled.

Each slot gets an ext4 image file (no blocks reserved for root, since the nodes run as root), mounted
through a loop device. Filling it is a real ENOSPC for that node alone; freeing it is deleting the filler
file. Everything is created under the run's own folder and undone by `teardown`, which only unmounts the
mount points it made itself."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from .topology import TopologyError, run

FILLER = "nemesis-filler"


class Disks:
    def __init__(self, root: Path, slots: list[int], size_mb: int = 192) -> None:
        self.root = root
        self.slots = slots
        self.size_mb = size_mb
        self.mounts: dict[int, Path] = {}

    def image(self, slot: int) -> Path:
        return self.root / f"disk{slot}.img"

    def mount_point(self, slot: int) -> Path:
        return self.root / f"disk{slot}"

    def setup(self) -> Disks:
        if not shutil.which("mkfs.ext4"):
            raise TopologyError("mkfs.ext4 not found (install the Debian package e2fsprogs)")
        self.root.mkdir(parents=True, exist_ok=True)
        for slot in self.slots:
            img, mnt = self.image(slot), self.mount_point(slot)
            with open(img, "wb") as fh:
                fh.truncate(self.size_mb << 20)
            run("mkfs.ext4", "-q", "-F", "-m", "0", str(img), timeout=60)
            mnt.mkdir(exist_ok=True)
            run("mount", "-o", "loop", str(img), str(mnt), timeout=30)
            self.mounts[slot] = mnt
        return self

    def free_bytes(self, slot: int) -> int:
        st = os.statvfs(self.mounts[slot])
        return st.f_bavail * st.f_frsize

    def fill(self, slot: int) -> int:
        """Write a filler file until the filesystem refuses (ENOSPC); returns the bytes left free."""
        path = self.mounts[slot] / FILLER
        chunk = b"\0" * (1 << 20)
        with open(path, "ab", buffering=0) as fh:
            for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9):
                piece = chunk[:size]
                while True:
                    try:
                        fh.write(piece)
                    except OSError as e:
                        if e.errno != errno.ENOSPC:
                            raise
                        break
            try:
                os.fsync(fh.fileno())
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
        return self.free_bytes(slot)

    def free(self, slot: int) -> None:
        (self.mounts[slot] / FILLER).unlink(missing_ok=True)

    def teardown(self) -> None:
        """Unmount what we mounted (lazily if a dying process still holds a file) and drop the images."""
        for slot, mnt in list(self.mounts.items()):
            p = run("umount", str(mnt), check=False, timeout=30)
            if p.returncode != 0:
                run("umount", "-l", str(mnt), check=False, timeout=30)
            self.image(slot).unlink(missing_ok=True)
            del self.mounts[slot]
