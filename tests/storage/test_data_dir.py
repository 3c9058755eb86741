"""Checks made before LMDB opens a data directory: one process per directory (a real second process),
and a truncated or emptied data.mdb refused with one line instead of SIGBUS or a fresh store."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from raftkv.core import ConfState, Entry, EntryType, HardState
from raftkv.storage import LmdbNodeStore, cluster_id_for
from raftkv.storage.commands import Put, encode
from raftkv.storage.errors import DataDirInUse, TruncatedError

CID = cluster_id_for({1: "a:1"})

OPEN = textwrap.dedent("""
    import sys
    from raftkv.storage import LmdbNodeStore, cluster_id_for
    from raftkv.storage.errors import StorageError
    try:
        LmdbNodeStore(sys.argv[1], 1, cluster_id_for({1: "a:1"}), map_size=64 << 20)
    except StorageError as e:
        print(type(e).__name__, e)
        sys.exit(3)
    print("opened")
""")


def open_in_another_process(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", OPEN, str(path)], capture_output=True, text=True, timeout=60)


def filled(path: Path, n: int = 200) -> None:
    s = LmdbNodeStore(path, 1, CID, map_size=64 << 20)
    s.bootstrap(ConfState(frozenset({1})), {})
    ents = [Entry(1, 2 + i, EntryType.NORMAL, encode(Put(b"k%05d" % i, os.urandom(2000)))) for i in range(n)]
    s.save_and_apply(HardState(1, 1, n + 1), ents, None, [Entry(1, 1)] + ents, ConfState(frozenset({1})), None)
    s.close()


def test_a_second_process_cannot_open_the_directory(tmp_path: Path) -> None:
    s = LmdbNodeStore(tmp_path, 1, CID, map_size=64 << 20)
    r = open_in_another_process(tmp_path)
    assert r.returncode == 3, r.stderr
    assert r.stdout.strip() == f"DataDirInUse data directory {tmp_path} is in use by another process (pid {os.getpid()})"
    s.close()
    r = open_in_another_process(tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "opened", r.stderr


def test_the_same_process_cannot_open_it_twice(tmp_path: Path) -> None:
    s = LmdbNodeStore(tmp_path, 1, CID, map_size=64 << 20)
    with pytest.raises(DataDirInUse):
        LmdbNodeStore(tmp_path, 1, CID, map_size=64 << 20)
    s.close()


def test_a_truncated_data_file_is_refused_with_one_line(tmp_path: Path) -> None:
    filled(tmp_path)
    data = tmp_path / "data.mdb"
    size = data.stat().st_size
    os.truncate(data, size // 2)
    r = open_in_another_process(tmp_path)  # before the check: SIGBUS, no message
    assert r.returncode == 3, (r.returncode, r.stderr)
    line = r.stdout.strip()
    assert line.startswith(f"TruncatedError {data}: truncated: expected at least {size} bytes")
    assert f"found {size // 2}" in line and "\n" not in line


def test_an_emptied_data_file_is_refused(tmp_path: Path) -> None:
    filled(tmp_path, 5)
    os.truncate(tmp_path / "data.mdb", 0)
    with pytest.raises(TruncatedError, match=r"data.mdb: is empty \(0 bytes\)"):
        LmdbNodeStore(tmp_path, 1, CID, map_size=64 << 20)


def test_a_data_file_that_is_not_lmdb_is_refused(tmp_path: Path) -> None:
    filled(tmp_path, 5)
    (tmp_path / "data.mdb").write_bytes(b"\0" * 65536)
    r = open_in_another_process(tmp_path)
    assert r.returncode == 3 and "no valid LMDB meta page" in r.stdout, (r.returncode, r.stdout, r.stderr)
