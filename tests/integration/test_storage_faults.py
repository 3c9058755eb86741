"""Damaged, full and shared disks on real `raftkv serve` processes over real LMDB files:

- keys longer than LMDB's 511-byte limit, through every KV call and a full restart;
- a value flipped inside a stopped node's data.mdb: refused with DATA_LOSS, and an apply over it stops
  the node (NEEDS_OPERATOR) with one line naming the file and the key;
- a truncated or emptied data.mdb: refused with one line (instead of SIGBUS or a fresh store);
- a second process on one data directory: refused (RETRY);
- a full disk (a real, small loop-mounted ext4): the NOSPACE alarm, and recovery once space returns.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from raftkv import exit_codes
from raftkv.client import Client, RaftKVError, UnavailableError, compare, op_get, op_put
from raftkv.client.errors import from_rpc_error
from raftkv.proto.stubs import kv_pb2 as pb
from raftkv.proto.stubs import kv_pb2_grpc, watch_pb2_grpc
from raftkv.proto.stubs import watch_pb2 as wpb
from raftkv.storage.commands import prefix_end

from ..flipped_bytes import flip_value_bytes
from . import loop_disk
from .local_cluster import LocalCluster
from .loop_disk import fill

K600 = b"k" * 600
K4096 = b"q" * 4096
SHARED = [b"p" * 480 + b"2" * 120, b"p" * 480 + b"1" * 120, b"p" * 479]


def error_lines(cluster: LocalCluster, i: int) -> list[str]:
    return [ln for ln in cluster.log_text(i).splitlines() if ln.startswith("Error:")]


def test_long_keys_work_on_a_real_cluster_and_survive_a_restart(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        c.put(K600, b"v600")
        c.put(K4096, b"v4096")
        for k in SHARED:
            c.put(k, k[-1:])
        assert c.get(K600).kv.value == b"v600" and c.get(K4096).kv.value == b"v4096"
        r = c.range(b"p", prefix=True)
        assert [kv.key for kv in r.kvs] == sorted(SHARED) and r.count == 3
        t = c.txn([compare(K600, "value", "=", b"v600")], [op_put(K4096, b"swapped"), op_get(K600)])
        assert t.succeeded
        d = c.delete(SHARED[0], prev_kv=True)
        assert d.deleted == 1 and d.prev_kvs[0].key == SHARED[0]
        last = c.put(b"last", b"x").meta.index
    for i in (1, 2, 3):
        cluster.wait_applied(i, last)
    cluster.stop_all()
    for i in (1, 2, 3):
        cluster.start(i)
    cluster.wait_leader()
    with cluster.client() as c:
        assert c.get(K4096).kv.value == b"swapped" and c.get(K600).kv.value == b"v600"
        assert [kv.key for kv in c.range(b"p", prefix_end(b"p")).kvs] == sorted(SHARED[1:])
        last = c.put(K600, b"after-restart").meta.index
    for i in (1, 2, 3):
        cluster.wait_applied(i, last)
        with Client(cluster.address(i)) as c:
            got = c.get(K600, consistency="serializable", endpoint=cluster.address(i))
            assert got.kv.value == b"after-restart" and got.meta.served_by == i
        assert cluster.procs[i].poll() is None, cluster.log_text(i)[-2000:]


def test_a_flipped_value_on_disk_is_refused_and_an_apply_over_it_stops_the_node(cluster: LocalCluster) -> None:
    value = b"precious-value-" + os.urandom(8).hex().encode()
    with cluster.client() as c:
        put_at = c.put(b"victim", value).meta.index
        c.put(b"bystander", b"fine")
        last = c.put(b"last", b"x").meta.index
    leader = cluster.wait_leader()
    node = next(i for i in (1, 2, 3) if i != leader)
    cluster.wait_applied(node, last)
    assert cluster.stop(node) == 0
    assert flip_value_bytes(cluster.root / f"node{node}" / "data.mdb", value) >= 1
    cluster.start(node)
    cluster.wait_applied(node, last)
    with Client(cluster.address(node)) as c:
        with pytest.raises(RaftKVError) as e:
            c.get(b"victim", consistency="serializable", endpoint=cluster.address(node))
        assert e.value.code == grpc.StatusCode.DATA_LOSS, e.value
        msg = str(e.value)
        assert f"node {node}" in msg and "b'victim'" in msg and "checksum" in msg
        with pytest.raises(RaftKVError) as e:
            c.range(b"", b"\0", consistency="serializable", endpoint=cluster.address(node))
        assert e.value.code == grpc.StatusCode.DATA_LOSS
        assert c.get(b"bystander", consistency="serializable", endpoint=cluster.address(node)).kv.value == b"fine"
    assert "refused to serve corrupted data" in cluster.log_text(node)
    # The change history's copy is damaged too: a watch that reaches it is canceled naming it, and never
    # served it.
    create = wpb.WatchCreateRequest(key=b"victim", after_revision=put_at - 1, watch_id=1)

    def requests() -> Iterator[wpb.WatchRequest]:
        yield wpb.WatchRequest(create=create)
        time.sleep(10)  # the stream stays open until the answer came

    with grpc.insecure_channel(cluster.address(node)) as ch:
        call = watch_pb2_grpc.WatchStub(ch).Watch(requests(), timeout=10)
        canceled = None
        for r in call:
            assert not any(e.kv.key == b"victim" for e in r.events), r
            if r.canceled:
                canceled = r
                break
        call.cancel()
    assert canceled is not None
    assert canceled.cancel_code == grpc.StatusCode.UNAVAILABLE.value[0], canceled
    assert f"revision {put_at} fails its checksum" in canceled.cancel_reason, canceled.cancel_reason
    # The cluster overwrites the key: applying it means reading the damaged record, so the node stops.
    with cluster.client() as c:
        c.put(b"victim", b"new")
    assert cluster.procs[node].wait(30) == exit_codes.NEEDS_OPERATOR
    lines = error_lines(cluster, node)
    assert len(lines) == 1 and "data.mdb" in lines[0] and "b'victim'" in lines[0] and "checksum" in lines[0], lines


def start_one_node(tmp_path: Path) -> LocalCluster:
    return LocalCluster(tmp_path, n=1).start_all()


@pytest.mark.parametrize("size", ["half", "zero"])
def test_a_truncated_data_file_is_refused_with_one_line(tmp_path: Path, size: str) -> None:
    c = start_one_node(tmp_path)
    try:
        with c.client() as cl:
            for i in range(100):
                cl.put(f"k{i}", os.urandom(4000))
    finally:
        c.stop_all()
    data = tmp_path / "node1" / "data.mdb"
    full = data.stat().st_size
    os.truncate(data, full // 2 if size == "half" else 0)
    c.start(1)
    assert c.procs[1].wait(30) == exit_codes.NEEDS_OPERATOR  # before: SIGBUS (half) / a fresh store (zero)
    lines = error_lines(c, 1)
    assert len(lines) == 1 and str(data) in lines[0], c.log_text(1)[-2000:]
    if size == "half":
        assert f"expected at least {full} bytes" in lines[0] and f"found {full // 2}" in lines[0]
    else:
        assert "is empty (0 bytes)" in lines[0]


def test_a_second_process_on_the_same_data_directory_is_refused(tmp_path: Path) -> None:
    c = start_one_node(tmp_path)
    try:
        second = LocalCluster(tmp_path / "second", n=1)
        cmd = second.command(1)
        cmd[cmd.index("--data-dir") + 1] = str(tmp_path / "node1")
        cmd[cmd.index("--peers") + 1] = c.peers  # the same node, on another port
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert r.returncode == exit_codes.RETRY, r.stderr
        assert r.stderr.strip().splitlines()[-1] == (
            f"Error: refusing to start: data directory {tmp_path / 'node1'} is in use by another process "
            f"(pid {c.procs[1].pid})")
        with c.client() as cl:  # the first one serves on, undisturbed
            cl.put(b"still", b"here")
            assert cl.get(b"still").kv.value == b"here"
    finally:
        c.stop_all()


# ------------------------------------------------------------------------------------------------
# A full disk
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 64 MiB ext4 filesystem, loop-mounted (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a loop filesystem needs root")
    with loop_disk.small_disk(tmp_path / "disk.img", tmp_path / "mnt") as mnt:
        yield mnt


def http_get(port: int, path: str) -> tuple[int, str]:
    for attempt in range(5):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except (ConnectionError, urllib.error.URLError):
            if attempt == 4:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def readiness(address: str) -> int:
    with grpc.insecure_channel(address) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="readiness"),
                                                    timeout=5).status


def test_a_full_disk_raises_nospace_and_the_node_recovers_when_space_returns(tmp_path: Path,
                                                                             small_disk: Path) -> None:
    (small_disk / "node1").mkdir()
    (tmp_path / "node1").symlink_to(small_disk / "node1")  # the data directory on the small disk, logs not
    c = LocalCluster(tmp_path, n=1).start_all()
    acked: dict[bytes, bytes] = {}
    try:
        with Client(c.address(1), timeout=3) as cl:
            for i in range(20):
                v = os.urandom(100_000)
                cl.put(b"before-%d" % i, v)
                acked[b"before-%d" % i] = v
            filler = small_disk / "filler"
            fill(filler)
            nospace = None
            for i in range(400):
                k, v = b"during-%d" % i, os.urandom(100_000)
                try:
                    cl.put(k, v)
                    acked[k] = v
                except RaftKVError as e:
                    if e.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        nospace = e
                        break
                    # A write caught in the persist that failed: its outcome is unknown until space returns.
                    assert e.code == grpc.StatusCode.DEADLINE_EXCEEDED, e
            assert nospace is not None, "the disk never filled up"
            assert nospace.reason == "NOSPACE" and str(nospace).startswith("NOSPACE: node 1 cannot persist")
            with pytest.raises(RaftKVError) as again:
                cl.put(b"refused", b"x")
            assert again.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and again.value.reason == "NOSPACE"
            # Reads go on; the alarm shows in the metric, /readyz and gRPC readiness; the process lives.
            for k in (b"before-0", b"before-19"):
                assert cl.get(k, consistency="serializable").kv.value == acked[k]
            _, metrics = http_get(c.metrics_ports[1], "/metrics")
            assert 'raftkv_alarm{type="nospace"} 1.0' in metrics
            code, body = http_get(c.metrics_ports[1], "/readyz")
            assert code == 503 and "NOSPACE" in body
            wait_for(lambda: readiness(c.address(1)) == health_pb2.HealthCheckResponse.NOT_SERVING, "not ready", 10)
            assert http_get(c.metrics_ports[1], "/livez")[0] == 200 and c.procs[1].poll() is None
            assert "NOSPACE alarm" in c.log_text(1)

            filler.unlink()
            deadline = time.monotonic() + 30
            while True:
                try:
                    cl.put(b"after", b"space returned")
                    break
                except RaftKVError as e:
                    assert time.monotonic() < deadline, f"the node did not recover: {e}"
                    time.sleep(0.5)
            _, metrics = http_get(c.metrics_ports[1], "/metrics")
            assert 'raftkv_alarm{type="nospace"} 0.0' in metrics
            assert http_get(c.metrics_ports[1], "/readyz")[0] == 200
            wait_for(lambda: readiness(c.address(1)) == health_pb2.HealthCheckResponse.SERVING, "readiness", 10)
            for k, v in acked.items():  # no acknowledged write lost
                assert cl.get(k).kv.value == v, k
        # ... and none after a restart either.
        assert c.stop(1) == 0
        c.start(1)
        c.wait_leader()
        with Client(c.address(1), timeout=10) as cl:
            assert all(cl.get(k).kv.value == v for k, v in acked.items())
            assert cl.get(b"after").kv.value == b"space returned"
    finally:
        c.stop_all()
        shutil.rmtree(small_disk / "node1", ignore_errors=True)


def wait_for(check, what: str, timeout: float = 30.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_one_full_disk_in_three_the_cluster_commits_on_and_the_full_node_never_acks(tmp_path: Path,
                                                                                   small_disk: Path) -> None:
    c = _node3_on(small_disk, tmp_path)
    acked: dict[bytes, bytes] = {}
    try:
        leader = _leader_other_than_3(c)
        other = ({1, 2} - {leader}).pop()
        healthy = Client([c.address(1), c.address(2)], timeout=10)
        first = healthy.put(b"before", b"durable on node 3").meta.index
        c.wait_applied(3, first)
        fill(small_disk / "filler")
        # The cluster commits through the two healthy nodes while node 3 cannot persist. A full ext4
        # answers LMDB's write with ENOSPC (the NOSPACE alarm: node 3 waits for space) or, now and then,
        # its fsync with EIO: after a failed fsync nothing is known of what reached the disk, so the node
        # stops with RETRY rather than go on (never acknowledging what it could not persist either way).
        for i in range(300):
            k, v = b"k%04d" % i, os.urandom(50_000)
            healthy.put(k, v)
            acked[k] = v
            # Alarmed, node 3 first appends from its released reserve (durably: it may acknowledge that);
            # once the reserve is used up too, its persist waits for space ("stalled").
            if i >= 20 and (c.procs[3].poll() is not None or _stalled(c, 3)):
                break
        stopped = c.procs[3].poll() is not None
        if stopped:
            assert c.procs[3].wait() == exit_codes.RETRY
            assert "Error: stopped:" in c.log_text(3)
        else:
            assert _nospace_alarm(c.metrics_ports[3]) and _stalled(c, 3)
            assert http_get(c.metrics_ports[3], "/readyz")[0] == 503 and c.procs[3].poll() is None
            with Client(c.address(3), timeout=3) as cl:
                assert cl.get(b"before", consistency="serializable").kv.value == b"durable on node 3"
        # With the other healthy node down, a write needs node 3's acknowledgement: it must not come.
        assert c.stop(other) == 0
        with Client(c.address(leader), timeout=3) as cl:
            with pytest.raises(RaftKVError):
                cl.put(b"needs-node-3", b"x")
        (small_disk / "filler").unlink()
        if stopped:
            c.start(3)  # what a supervisor does with RETRY, once space is back
        # Space returns: node 3 persists what it holds, and with it the cluster commits again.
        with Client([c.address(leader), c.address(3)], timeout=5) as cl:
            wait_for(lambda: _put_ok(cl, b"after", b"recovered"), "a write committed with node 3", 60)
        c.start(other)
        c.wait_leader()
        last = healthy.put(b"last", b"x").meta.index
        healthy.close()
        for i in (1, 2, 3):
            c.wait_applied(i, last)
            with Client(c.address(i), timeout=10) as cl:
                for k, v in acked.items():  # no acknowledged write lost, and every member agrees
                    assert cl.get(k, consistency="serializable").kv.value == v, (i, k)
        assert 'raftkv_alarm{type="nospace"} 0.0' in http_get(c.metrics_ports[3], "/metrics")[1]
    finally:
        c.stop_all()
        shutil.rmtree(small_disk / "node3", ignore_errors=True)


def _nospace_alarm(port: int) -> bool:
    try:
        return 'raftkv_alarm{type="nospace"} 1.0' in http_get(port, "/metrics")[1]
    except (OSError, http.client.HTTPException):  # the node stopped meanwhile (a cut-off answer, or none)
        return False


def _node3_on(disk: Path, tmp_path: Path) -> LocalCluster:
    """A started 3-node cluster whose node 3 keeps its data directory on `disk` (its log stays off it)."""
    (disk / "node3").mkdir()
    (tmp_path / "node3").symlink_to(disk / "node3")
    return LocalCluster(tmp_path, n=3).start_all()


def _leader_other_than_3(c: LocalCluster) -> int:
    leader = c.wait_leader()
    if leader == 3:
        with c.client() as cl:
            cl.transfer_leader(1)
        leader = wait_for(lambda: c.wait_leader() if c.wait_leader() != 3 else 0, "a leader other than 3")
    return leader


def _stalled(c: LocalCluster, i: int) -> bool:
    """Node i's persist waits for space (its Status says so)."""
    try:
        return c.status(i).role == "stalled"
    except RaftKVError:
        return False


def _put_ok(cl: Client, k: bytes, v: bytes) -> bool:
    try:
        cl.put(k, v)
        return True
    except RaftKVError:
        return False


def test_map_size_is_validated(tmp_path: Path) -> None:
    cmd = LocalCluster(tmp_path, n=1).command(1) + ["--map-size", "4096"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and r.stderr.strip() == (
        "Error: --map-size must be between 1048576 (1 MiB) and 1099511627776 (1 TiB) bytes")


# ------------------------------------------------------------------------------------------------
# A frozen disk
# ------------------------------------------------------------------------------------------------
def test_a_follower_on_a_frozen_disk_stalls_loudly_and_catches_up_when_it_thaws(tmp_path: Path,
                                                                                 small_disk: Path) -> None:
    """`fsfreeze` holds every write to node 3's filesystem, as a disk that stops answering does. The
    cluster commits on through the other two; node 3's event loop, stuck in its log's fsync, has its
    watchdog write every thread's stack to the log while it is stuck (naming the commit it waits in); once
    the disk thaws, node 3 says for how long its loop stood still and catches up."""
    c = _node3_on(small_disk, tmp_path)
    frozen = False
    try:
        _leader_other_than_3(c)
        with Client([c.address(1), c.address(2)], timeout=10) as healthy:
            c.wait_applied(3, healthy.put(b"before", b"x").meta.index)
            before = len(c.log_text(3))
            subprocess.run(["fsfreeze", "-f", str(small_disk)], check=True)
            frozen = True
            for i in range(20):
                healthy.put(b"k%d" % i, b"v")  # committed by nodes 1 and 2 alone
            wait_for(lambda: "the event loop has not run for" in c.log_text(3)[before:], "node 3's stack dump", 30)
            dump = c.log_text(3)[before:]
            assert "storage/node_store.py" in dump and "in persist" in dump, dump[-3000:]
            subprocess.run(["fsfreeze", "-u", str(small_disk)], check=True)
            frozen = False
            last = healthy.put(b"last", b"x").meta.index
            c.wait_applied(3, last, timeout=30)
        assert c.procs[3].poll() is None
        stalls = [ln for ln in c.log_text(3)[before:].splitlines() if '"event loop stalled"' in ln]
        assert stalls and max(float(json.loads(ln)["seconds"]) for ln in stalls) >= 2.0, stalls
    finally:
        if frozen:
            subprocess.run(["fsfreeze", "-u", str(small_disk)], check=False)
        c.stop_all()


def test_a_leader_on_a_frozen_disk_reports_not_ready_loses_leadership_and_catches_up(tmp_path: Path,
                                                                                       small_disk: Path) -> None:
    """The leader's synced commits run on its I/O thread: with its disk frozen, its event loop still
    answers, but its Raft loop waits in a Ready and sends no heartbeats. It must say so (readiness
    NOT_SERVING, naming the held-up Raft loop), the other two elect a leader and commit on, and once the
    disk thaws it logs how long its Raft loop was held up, follows, and catches up."""
    c = _node3_on(small_disk, tmp_path)
    frozen = False
    try:
        if c.wait_leader() != 3:
            with c.client() as cl:
                cl.transfer_leader(3)
            wait_for(lambda: c.wait_leader() == 3, "node 3 to lead")
        with Client(c.address(3), timeout=10) as cl:
            cl.put(b"before", b"x")
        before = len(c.log_text(3))
        subprocess.run(["fsfreeze", "-f", str(small_disk)], check=True)
        frozen = True
        with Client(c.address(3), timeout=2) as cl:
            with pytest.raises(RaftKVError):
                cl.put(b"stuck", b"x")  # its append waits on the frozen disk
        wait_for(lambda: readiness(c.address(3)) == health_pb2.HealthCheckResponse.NOT_SERVING,
                 "node 3 not ready", 15)
        code, body = http_get(c.metrics_ports[3], "/readyz")
        assert code == 503 and "the Raft loop has been held up" in json.loads(body)["not_ready_because"], body
        # Held up, it refuses at once what needs its Raft loop, saying why, rather than letting each
        # request wait out its deadline: nothing was proposed, so any client may try another node.
        with grpc.insecure_channel(c.address(3)) as ch:
            for call in (lambda: kv_pb2_grpc.KVStub(ch).Put(pb.PutRequest(key=b"refused", value=b"x"), timeout=10),
                         lambda: kv_pb2_grpc.KVStub(ch).Range(pb.RangeRequest(key=b"before"), timeout=10)):
                with pytest.raises(grpc.RpcError) as raw:
                    call()
                err = from_rpc_error(raw.value)
                assert isinstance(err, UnavailableError) and err.reason == "RAFT_LOOP_HELD_UP", err
                assert "node 3: the Raft loop has been held up" in str(err) and "try another node" in str(err)
        with Client([c.address(3), c.address(1), c.address(2)], timeout=15) as cl:
            assert cl.put(b"elsewhere", b"x").meta.served_by != 3  # the client moved on
        with Client([c.address(1), c.address(2)], timeout=15) as healthy:
            for i in range(10):
                healthy.put(b"k%d" % i, b"v")  # nodes 1 and 2 elected one of them and commit alone
            subprocess.run(["fsfreeze", "-u", str(small_disk)], check=True)
            frozen = False
            last = healthy.put(b"last", b"x").meta.index
            c.wait_applied(3, last, timeout=30)
        assert c.wait_leader() != 3 and c.procs[3].poll() is None
        wait_for(lambda: readiness(c.address(3)) == health_pb2.HealthCheckResponse.SERVING, "node 3 ready", 15)
        held = [ln for ln in c.log_text(3)[before:].splitlines() if '"raft loop held up"' in ln]
        assert held and max(float(json.loads(ln)["seconds"]) for ln in held) >= 1.0, held
    finally:
        if frozen:
            subprocess.run(["fsfreeze", "-u", str(small_disk)], check=False)
        c.stop_all()
