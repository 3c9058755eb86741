"""A real 3-node cluster: writes through any node, kill -9 of the leader under load, full restarts, snapshot
catch-up, the bank-balance example, refusal of bad input, and refusal of bad data on disk."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import lmdb
import msgpack
import pytest

from raftkv.client import Client, InvalidArgumentError, RaftKVError, compare, op_get, op_put

from .local_cluster import LocalCluster


def test_writes_through_any_node_and_reads_everywhere(cluster: LocalCluster) -> None:
    for i in (1, 2, 3):
        with Client(cluster.address(i)) as c:  # a single endpoint: followers forward to the leader
            r = c.put(f"from-{i}", f"v{i}")
            assert r.meta.index > 0 and r.meta.ack_achieved != 0
    with cluster.client() as c:
        for i in (1, 2, 3):
            got = c.get(f"from-{i}")
            assert got.found and got.kv.value == f"v{i}".encode()
        last = c.put("last", "x").meta.index
    for i in (1, 2, 3):
        cluster.wait_applied(i, last)
        with Client(cluster.address(i)) as c:
            r = c.get("from-1", consistency="serializable", endpoint=cluster.address(i))
            assert r.kv.value == b"v1" and r.meta.served_by == i


def test_kill_9_leader_under_load_loses_no_acknowledged_write(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    acked: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        with cluster.client(timeout=10) as c:
            n = 0
            while not stop.is_set() and n < 5000:
                key = f"load-{n}"
                try:
                    c.put(key, "v")
                    acked.append(key)
                except RaftKVError:
                    pass  # not acknowledged: may or may not be there, and that is allowed
                n += 1

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(1.0)
    before = len(acked)
    cluster.kill(leader)
    killed_at = time.monotonic()
    survivors = [i for i in (1, 2, 3) if i != leader]
    new_leader = cluster.wait_leader(survivors)
    elected_after = time.monotonic() - killed_at
    while len(acked) < before + 20 and time.monotonic() - killed_at < 20:
        time.sleep(0.05)
    recovered_after = time.monotonic() - killed_at
    cluster.start(leader)
    time.sleep(1.0)
    stop.set()
    t.join(30)
    assert new_leader != leader
    assert len(acked) > before + 20, "writes did not resume after the leader was killed"
    print(f"\nkill -9 of leader {leader}: new leader {new_leader} after {elected_after:.2f}s, "
          f"writes flowing again after {recovered_after:.2f}s; {len(acked)} writes acknowledged")
    with cluster.client() as c:
        r = c.range("load-", prefix=True, keys_only=True)
        present = {kv.key.decode() for kv in r.kvs}
    missing = [k for k in acked if k not in present]
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
    # The restarted node catches up and holds them too.
    last = cluster.status(new_leader).commit
    cluster.wait_applied(leader, last)
    with Client(cluster.address(leader)) as c:
        r = c.range("load-", prefix=True, keys_only=True, consistency="serializable", endpoint=cluster.address(leader))
        assert {kv.key.decode() for kv in r.kvs} >= set(acked)


def test_full_cluster_restart_keeps_everything(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        for i in range(50):
            c.put(f"keep-{i:02d}", f"v{i}")
        c.delete("keep-00")
    for i in (1, 2, 3):
        assert cluster.stop(i) == 0  # graceful stop on SIGTERM
    for i in (1, 2, 3):
        cluster.start(i)
    cluster.wait_leader()
    with cluster.client() as c:
        r = c.range("keep-", prefix=True)
        assert [kv.key.decode() for kv in r.kvs] == [f"keep-{i:02d}" for i in range(1, 50)]
        assert c.get("keep-07").kv.version == 1


def test_node_down_long_enough_needs_a_snapshot(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, extra=["--snapshot-entries", "50", "--snapshot-keep-entries", "10"]).start_all()
    try:
        leader = c.wait_leader()
        lagger = next(i for i in (1, 2, 3) if i != leader)
        assert c.stop(lagger) == 0
        with c.client() as cl:
            for i in range(400):
                cl.put(f"snap-{i:03d}", "x" * 50)
        st = c.status(leader)
        assert st.snapshot_index > 0, "the leader did not snapshot"
        c.start(lagger)
        c.wait_applied(lagger, st.commit, timeout=30)
        lst = c.status(lagger)
        assert lst.snapshot_index > 0  # it installed a snapshot rather than replaying the whole log
        with Client(c.address(lagger)) as cl:
            r = cl.range("snap-", prefix=True, count_only=True, consistency="serializable", endpoint=c.address(lagger))
            assert r.count == 400
        assert "installed snapshot" in c.log_text(lagger)
    finally:
        c.stop_all()


def test_balance_example_ends_at_850(cluster: LocalCluster) -> None:
    """The bank-balance example: balance 1000, two clients on different nodes subtract 100 and 50 at the
    same moment. With compare-and-swap and retries the result is 850, never 900 or 950."""
    for _round in range(3):
        with cluster.client() as c:
            c.put("balance", "1000")
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def withdraw(node: int, amount: int, barrier: threading.Barrier = barrier,
                     errors: list[BaseException] = errors) -> None:
            try:
                with Client(cluster.address(node)) as c:
                    barrier.wait()
                    for _ in range(50):
                        cur = c.get("balance").kv.value
                        new = str(int(cur) - amount)
                        r = c.txn([compare("balance", "value", "=", cur)], [op_put("balance", new)], [op_get("balance")])
                        if r.succeeded:
                            return
                    raise AssertionError("too many retries")
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=withdraw, args=(2, 100)), threading.Thread(target=withdraw, args=(3, 50))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        with cluster.client() as c:
            assert c.get("balance").kv.value == b"850"


def test_bad_requests_are_refused_and_change_nothing(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        c.put("stable", "1")
        before = c.range("", "\0", count_only=True).count
        with pytest.raises(InvalidArgumentError, match="limit is 4096"):
            c.put("k" * 5000, "v")
        with pytest.raises(InvalidArgumentError, match="value is"):
            c.put("big", b"x" * ((1 << 20) + 1))
        with pytest.raises(InvalidArgumentError, match="must not be empty"):
            c.put("", "v")
        with pytest.raises(InvalidArgumentError, match="session_token"):
            c.get("stable", consistency="session", session_token=b"")
        with pytest.raises(InvalidArgumentError, match="session token"):
            c.get("stable", consistency="session", session_token=b"\x01" * 21)
        with pytest.raises(InvalidArgumentError, match="max_staleness_ms"):
            c.get("stable", consistency="bounded_staleness")
        with pytest.raises(InvalidArgumentError) as refused:
            c.put("k" * 5000, "v")
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert c.range("", "\0", count_only=True).count == before
        assert c.get("stable").kv.version == 1


def _flip_last_entry(data_dir: Path) -> int:
    env = lmdb.open(str(data_dir), max_dbs=8)
    db = env.open_db(b"log")
    with env.begin(write=True, db=db) as txn:
        cur = txn.cursor()
        cur.last()
        key, raw = cur.key(), cur.value()
        term, etype, data, crc = msgpack.unpackb(raw)
        txn.put(key, msgpack.packb([term, etype, data + b"!", crc], use_bin_type=True))
    env.close()
    return int.from_bytes(key, "big")


def test_corrupt_or_foreign_data_dir_refuses_to_start(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        c.put("a", "b")
    assert cluster.stop(3) == 0
    index = _flip_last_entry(cluster.root / "node3")
    cluster.start(3)
    assert cluster.procs[3].wait(20) != 0
    err = [ln for ln in cluster.log_text(3).splitlines() if ln.startswith("Error:")]
    assert err and "checksum" in err[-1] and f"entry {index}" in err[-1] and "data.mdb" in err[-1]
    assert "Traceback" not in cluster.log_text(3)
    # Node 2's data under a different founding member list (another cluster) is refused too.
    assert cluster.stop(2) == 0
    other = LocalCluster(cluster.root, extra=[])
    other.ports = {1: cluster.ports[1], 2: cluster.ports[2], 4: 1}
    other.metrics_ports = dict(cluster.metrics_ports)
    other.metrics_ports[4] = 1
    other.start(2)
    assert other.procs[2].wait(20) != 0
    assert "belongs to cluster" in other.log_text(2) and "Traceback" not in other.log_text(2)
