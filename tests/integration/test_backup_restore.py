"""Backup and restore with real processes (issue 17 item 3, README "Backup and restore"): `kv snapshot
save` from a follower under write load, `kv snapshot status`, every node lost, `raftkv restore` of each
member of a new cluster, `raftkv serve` on the restored directories: every write acknowledged before the
backup began is there, in a cluster with a new id. A damaged file is refused before anything is written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from raftkv import exit_codes
from raftkv.backup_file import BUCKET_THRESHOLD
from raftkv.client import RaftKVError
from raftkv.client.maintenance import MaintenanceClient
from raftkv.client.watch import WatchCanceledError
from raftkv.storage.kv_records import BUCKET_THRESHOLD as STORE_BUCKET_THRESHOLD

from .local_cluster import LocalCluster
from .test_cli import kv


def restore(file: Path, data_dir: Path, node_id: int, peers: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "raftkv.cli.server_main", "restore", str(file), "--data-dir",
                           str(data_dir), "--id", str(node_id), "--peers", peers],
                          capture_output=True, text=True, timeout=60)


def test_the_backup_format_counts_buckets_as_the_store_makes_them() -> None:
    assert BUCKET_THRESHOLD == STORE_BUCKET_THRESHOLD


def test_backup_lose_every_node_restore_and_serve(tmp_path: Path) -> None:
    backup = tmp_path / "backup.snap"
    for d in ("old", "new"):
        (tmp_path / d).mkdir()
    old = LocalCluster(tmp_path / "old").start_all()
    acked: dict[bytes, bytes] = {}
    try:
        with old.client() as c:
            for i in range(80):
                key, value = b"k%04d" % i, os.urandom(64)
                c.put(key, value)
                acked[key] = value
            for tail in (b"1", b"2"):  # long keys share one bucket in LMDB
                key = b"L" * 500 + tail
                c.put(key, b"long " + tail)
                acked[key] = b"long " + tail
            c.put(b"bin\xff\x00", b"\x00\xfe")
            acked[b"bin\xff\x00"] = b"\x00\xfe"
            leader = old.wait_leader()
            follower = next(i for i in old.ports if i != leader)
            old_cluster = old.status(leader).cluster_id

            stop = threading.Event()
            during: list[bytes] = []

            def write_load() -> None:  # bounded: at most 2000 writes, stopped once the save returns
                with old.client() as w:
                    for i in range(2000):
                        if stop.is_set():
                            return
                        try:
                            w.put(b"during%05d" % i, b"x" * 100)
                            during.append(b"during%05d" % i)
                        except RaftKVError:
                            pass

            writer = threading.Thread(target=write_load)
            writer.start()
            try:
                deadline = time.monotonic() + 30
                while len(during) < 20 and writer.is_alive() and time.monotonic() < deadline:
                    time.sleep(0.02)  # the save starts under load
                r = kv(None, "snapshot", "save", str(backup), endpoints=old.address(follower))
            finally:
                stop.set()
                writer.join(60)
            assert r.returncode == 0, r.stderr
            assert r.stdout.startswith(f"Snapshot saved at {backup}: revision "), r.stdout
            assert not (tmp_path / "backup.snap.part").exists()
            # Without a named endpoint, the first that answers sends it (here not the first listed).
            with MaintenanceClient(f"127.0.0.1:1,{old.address(leader)}", timeout=30) as m:
                second = m.save_snapshot(tmp_path / "second.snap")
            assert second.header.node == leader and second.keys >= len(acked)
    finally:
        old.stop_all()
    r = kv(None, "-w", "json", "snapshot", "status", str(backup))
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["keys"] >= len(acked) and info["size"] == backup.stat().st_size
    assert info["cluster_id"] == old_cluster.hex() and sorted(info["voters"]) == [1, 2, 3]
    assert info["node"] == follower and len(info["sha256"]) == 64
    revision = info["revision"]
    shutil.rmtree(tmp_path / "old")  # every node lost, data directories included

    # A damaged copy is refused whole: exit 65, one line, nothing written.
    damaged = tmp_path / "damaged.snap"
    data = bytearray(backup.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    r = kv(None, "snapshot", "status", str(damaged))
    assert r.returncode == 1 and "fails its SHA-256" in r.stderr
    bad = restore(damaged, tmp_path / "bad", 1, "1=127.0.0.1:1")
    assert bad.returncode == exit_codes.NEEDS_OPERATOR, bad.stderr
    assert bad.stderr.count("\n") == 1 and "fails its SHA-256" in bad.stderr
    assert not (tmp_path / "bad" / "data.mdb").exists()

    new = LocalCluster(tmp_path / "new")
    restores = {i: subprocess.Popen([sys.executable, "-m", "raftkv.cli.server_main", "restore", str(backup),
                                     "--data-dir", str(new.root / f"node{i}"), "--id", str(i), "--peers", new.peers],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i in sorted(new.ports)}  # each member's restore runs on its own host: side by side
    for p in restores.values():
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert f"restored revision {revision}" in out
    r = restore(backup, new.root / "node1", 1, new.peers)
    assert r.returncode == exit_codes.USAGE and "already holds data" in r.stderr
    new.start_all()
    try:
        with new.client() as c:
            for key, value in acked.items():
                got = c.get(key)
                assert got.found and got.kv.value == value, key
            assert c.range(b"", b"\0", count_only=True).count == info["keys"]
            w = c.put(b"after-restore", b"1")
            assert w.meta.index > revision  # revisions go on from the backup's
            # The restored members hold no change history before the backup's revision: a watch from
            # earlier is refused naming the oldest revision they have, never served with nothing.
            with pytest.raises(WatchCanceledError) as e:
                next(iter(c.watch(next(iter(acked)), after_revision=1)))
            assert e.value.code == grpc.StatusCode.OUT_OF_RANGE and e.value.compact_revision == revision + 1
        ids = {new.status(i).cluster_id for i in new.ports}
        assert len(ids) == 1 and old_cluster not in ids
    finally:
        new.stop_all()
