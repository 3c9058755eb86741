"""Real small filesystems for disk-full tests: an ext4 image of a few MiB, loop-mounted (root only), and a
filler that writes until the filesystem refuses another byte."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def small_disk(image: Path, mnt: Path, size: str = "64M") -> Iterator[Path]:
    """A real ext4 filesystem of `size` in the file `image`, loop-mounted at `mnt` (created here), unmounted
    on exit (lazily if a process still holds a file on it)."""
    mnt.mkdir()
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-m", "0", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path) -> None:
    """Write a filler file at `path` until its filesystem refuses another byte."""
    with open(path, "wb", buffering=0) as f:
        for chunk in (1 << 20, 4096, 512):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass
        try:
            os.fsync(f.fileno())
        except OSError:
            pass
