"""Divergence checks and the CORRUPT alarm (issue 17 item 5, docs/runbooks/corruption-alarm.md).

A stopped follower's applied data is changed behind its back in its real LMDB file: one byte of one value
flipped, and the record re-sealed, as a flip before sealing (a bad apply, a flip in memory) would leave it:
no checksum can see it, neither the log entry's nor the record's. Only comparing members finds it. The
periodic check (`--corruption-check-interval`) raises the CORRUPT alarm; `kv check hash` names the member;
writes are refused with FAILED_PRECONDITION / CORRUPT; `kv status`, `kv alarm list`, the metric and the
log show it; nothing is repaired; `kv alarm disarm` lets writes in again."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import lmdb
import msgpack
import pytest

from raftkv.client import Client, FailedPreconditionError
from raftkv.client.maintenance import MaintenanceClient
from raftkv.storage import kv_records

from .local_cluster import LocalCluster
from .observe import wait_for
from .test_cli import kv


def flip_a_value_behind_its_back(data_dir: Path, key: bytes) -> bytes:
    """In the stopped node's data.mdb: flip one byte of `key`'s value and re-seal its record. Returns the
    new value."""
    env = lmdb.open(str(data_dir), max_dbs=16, subdir=True)
    try:
        meta = env.open_db(b"meta")
        with env.begin(db=meta) as txn:
            gen = int(txn.get(b"state_gen") or b"0")
        kv_db = env.open_db(b"kv" if gen == 0 else b"kv~1")
        with env.begin(write=True, db=kv_db) as txn:
            record = bytes(txn.get(key))
            value, create, mod, version = msgpack.unpackb(kv_records.unseal(key, record, "test"))
            changed = bytearray(value)
            changed[0] ^= 0x01
            body = msgpack.packb([bytes(changed), create, mod, version], use_bin_type=True)
            txn.put(key, kv_records.seal(key, body))
        return bytes(changed)
    finally:
        env.close()


def http_json(url: str) -> dict:
    """The /health answer (503 when not ready, with the same body)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - loopback test URL
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


def metric(url: str, line_start: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - loopback test URL
        return next((ln for ln in r.read().decode().splitlines() if ln.startswith(line_start)), "")


@pytest.fixture
def checked(tmp_path: Path):  # noqa: ANN201
    c = LocalCluster(tmp_path, extra=["--corruption-check-interval", "1"]).start_all()
    try:
        yield c
    finally:
        c.stop_all()


def test_a_value_changed_behind_a_followers_back_raises_corrupt(checked: LocalCluster) -> None:
    cluster = checked
    with cluster.client() as c:
        for i in range(50):
            last = c.put(b"k%04d" % i, b"value %d" % i).meta.index
    with MaintenanceClient(cluster.endpoints, timeout=30) as m:  # in-process: a `kv` process costs ~1 s
        before = m.check_hash()
    assert not before.corrupt and [x.matches for x in before.members] == [True] * 3
    leader = cluster.wait_leader()
    f = next(i for i in sorted(cluster.ports) if i != leader)
    cluster.wait_applied(f, last)
    assert cluster.stop(f) == 0
    bad = flip_a_value_behind_its_back(cluster.root / f"node{f}", b"k0007")
    cluster.start(f)
    cluster.wait_applied(f, last)

    # The periodic check finds it by itself: every member holds the alarm.
    def alarmed() -> bool:
        try:
            return all(any("CORRUPT" in a for a in cluster.status(i).alarms) for i in cluster.ports)
        except Exception:  # noqa: BLE001 - a node still starting
            return False

    wait_for("the CORRUPT alarm on every member", alarmed, timeout=30, every=0.2)
    r = kv(cluster, "check", "hash")
    assert r.returncode == 1 and f"node(s) {f} differ" in r.stderr, r.stdout + r.stderr
    assert f"node {f} " in r.stdout and "DIFFERS" in r.stdout
    r = kv(cluster, "status")
    assert r.stdout.count(f"ALARM CORRUPT: node {f}'s state machine differs") == 3, r.stdout
    r = kv(cluster, "alarm", "list")
    assert r.returncode == 0 and r.stdout.startswith(f"memberID:{f} alarm:CORRUPT"), r.stdout

    # Writes are refused, precisely; nothing is repaired; the member named is not ready, the others are.
    with cluster.client() as c:
        with pytest.raises(FailedPreconditionError) as refused:
            c.put(b"while-corrupt", b"x")
        assert refused.value.reason == "CORRUPT" and f"node {f}'s state machine differs" in str(refused.value)
        assert c.get(b"k0007", consistency="serializable", endpoint=cluster.address(f)).kv.value == bad
    health = http_json(f"http://127.0.0.1:{cluster.metrics_ports[f]}/health")
    assert not health["ready"] and "CORRUPT" in health["not_ready_because"] and "corrupt" in health["alarms"]
    other = next(i for i in sorted(cluster.ports) if i != f)
    assert http_json(f"http://127.0.0.1:{cluster.metrics_ports[other]}/health")["ready"]
    assert metric(f"http://127.0.0.1:{cluster.metrics_ports[other]}/metrics",
                  'raftkv_alarm{type="corrupt"}').endswith(" 1.0")
    assert any('"divergence found"' in cluster.log_text(i) for i in cluster.ports)

    # The runbook: stop the member named, remove it, disarm; then add it back fresh (as in
    # test_disaster_recovery.py). The others agree, and take writes again.
    assert cluster.stop(f) == 0
    rest = ",".join(cluster.address(i) for i in sorted(cluster.ports) if i != f)
    with Client(rest, timeout=10) as c:
        c.member_remove(f)
    r = kv(None, "alarm", "disarm", endpoints=rest)
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr
    with MaintenanceClient(rest, timeout=30) as m:
        after = m.check_hash()
    assert not after.corrupt and sorted(x.member_id for x in after.members if x.matches) == sorted(
        i for i in cluster.ports if i != f)
    with Client(rest, timeout=10) as c:
        assert c.put(b"after-disarm", b"1").meta.index > last
