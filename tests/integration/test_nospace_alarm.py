"""The NOSPACE alarm on real `raftkv serve` processes whose data directories sit on real, small,
loop-mounted ext4 filesystems (root only):

- with the leader's and a follower's disks full, deletes (Delete, a Txn of deletes) still commit and read
  back as deleted, anything that adds data is refused with RESOURCE_EXHAUSTED naming the alarm, and once
  space returns the alarm clears by itself, the reserve is back and puts work again;
- a leader whose persist waits for space (its reserve used up too) claims no role: `raftkv_is_leader` 0,
  Status and `kv status` say "stalled" while its peers elect another leader, and it rejoins as a follower.

In both no acknowledged write is lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from raftkv.client import Client, RaftKVError, op_delete, op_put
from raftkv.storage.disk_space import RESERVE_FILE

from .local_cluster import LocalCluster
from .loop_disk import fill, small_disk
from .test_storage_faults import http_get, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a loop filesystem needs root")


def on_small_disk(tmp_path: Path, stack: contextlib.ExitStack, node: int) -> Path:
    """Node `node`'s data directory on a small disk of its own (its log file stays on the big one)."""
    mnt = stack.enter_context(small_disk(tmp_path / f"disk{node}.img", tmp_path / f"mnt{node}"))
    (mnt / f"node{node}").mkdir()
    (tmp_path / f"node{node}").symlink_to(mnt / f"node{node}")
    stack.callback(shutil.rmtree, mnt / f"node{node}", True)
    return mnt


def settle() -> None:
    """Let the nodes' write-back buffers reach LMDB (within 100 ms of the last apply), so that no node writes
    while its disk is being filled: one that did would release its reserve to the filler, not to itself."""
    time.sleep(1)


def alarm(c: LocalCluster, i: int) -> float:
    return metric(c, i, 'raftkv_alarm{type="nospace"}')


def metric(c: LocalCluster, i: int, name: str) -> float:
    for line in http_get(c.metrics_ports[i], "/metrics")[1].splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in node {i}'s /metrics")


def lead_with(c: LocalCluster, node: int) -> None:
    """Make `node` the leader (a transfer, if the election chose another)."""
    if c.wait_leader() != node:
        with c.client() as cl:
            cl.transfer_leader(node)
    wait_for(lambda: c.wait_leader() == node, f"node {node} to lead", 30)


def put_until_refused(cl: Client, acked: dict[bytes, bytes], prefix: bytes) -> RaftKVError:
    """Puts until one is refused for lack of space. A put caught in a persist that waited for space may time
    out (its outcome unknown); any other failure is a bug."""
    for i in range(200):
        k, v = prefix + b"-%d" % i, os.urandom(100_000)
        try:
            cl.put(k, v)
            acked[k] = v
        except RaftKVError as e:
            if e.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return e
            assert e.code == grpc.StatusCode.DEADLINE_EXCEEDED, e
    raise AssertionError("the disk never filled up")


def check_everywhere(c: LocalCluster, acked: dict[bytes, bytes], deleted: list[bytes]) -> None:
    """Every member holds every acknowledged write, and none of the deleted keys."""
    with c.client() as cl:
        last = cl.put(b"last", b"x").meta.index
    for i in (1, 2, 3):
        c.wait_applied(i, last, 60)
        with Client(c.address(i), timeout=10) as cl:
            for k, v in acked.items():
                got = cl.get(k, consistency="serializable", endpoint=c.address(i))
                assert got.found and got.kv.value == v, (i, k)
            for k in deleted:
                assert not cl.get(k, consistency="serializable", endpoint=c.address(i)).found, (i, k)


def test_deletes_commit_under_the_nospace_alarm_with_the_leader_and_a_follower_full(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        disks = {i: on_small_disk(tmp_path, stack, i) for i in (1, 2)}
        # The test is about a full leader that goes on leading; a 1 s election timeout (not the harness's
        # 200 ms) keeps a loaded machine's scheduling stalls from moving leadership while its disk fills.
        c = LocalCluster(tmp_path, n=3, extra=["--election-ticks", "50"]).start_all()
        stack.callback(c.stop_all)
        lead_with(c, 1)
        acked: dict[bytes, bytes] = {}
        with Client(c.address(1), timeout=3) as cl:
            for i in range(10):
                for prefix in (b"keep", b"doomed", b"txn-doomed"):
                    k, v = prefix + b"-%d" % i, os.urandom(50_000)
                    cl.put(k, v)
                    acked[k] = v
            settle()
            fill(disks[1] / "filler")
            fill(disks[2] / "filler")
            refused = put_until_refused(cl, acked, b"during")
            assert refused.reason == "NOSPACE" and str(refused).startswith("NOSPACE: node 1 cannot persist"), refused
            assert "deletes only" in str(refused), refused
            assert alarm(c, 1) == 1
            assert c.wait_leader() == 1  # the full leader still leads: it persists, heartbeats and serves

            # Deletes go on: a Delete, and a Txn of deletes only, commit and read back as deleted.
            d = cl.delete(b"doomed-", prefix=True)
            assert d.deleted == 10
            t = cl.txn([], [op_delete(b"txn-doomed-%d" % i) for i in range(10)])
            assert t.succeeded
            # Node 2 had to persist those deletes on its full disk too (node 3 alone makes no majority
            # with the leader... it does; but node 2 appends them all the same, from its reserve).
            wait_for(lambda: alarm(c, 2) == 1, "the alarm on the full follower", 30)
            deleted = [k for k in acked if k.startswith((b"doomed", b"txn-doomed"))]
            for k in deleted:
                del acked[k]
                assert not cl.get(k).found, k  # a linearizable read, through the full leader
            # What adds data is refused, naming the alarm: a put, and a Txn holding a put among deletes.
            for attempt in (lambda: cl.put(b"refused", b"x"),
                            lambda: cl.txn([], [op_delete(b"keep-0"), op_put(b"refused", b"x")])):
                with pytest.raises(RaftKVError) as e:
                    attempt()
                assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and e.value.reason == "NOSPACE", e.value
                assert "NOSPACE: node 1 cannot persist" in str(e.value)
            assert cl.get(b"keep-0").kv.value == acked[b"keep-0"]  # that Txn applied nothing
            for i in (1, 2):  # both full nodes used their reserve
                assert not (disks[i] / f"node{i}" / RESERVE_FILE).exists()
            st = c.status(1)
            assert st.role == "leader" and st.alarms and st.alarms[0].startswith("NOSPACE: node 1"), st

            # Space returns: the alarm clears by itself, the reserve is back, and puts work again.
            for i in (1, 2):
                (disks[i] / "filler").unlink()
            wait_for(lambda: alarm(c, 1) == 0 and alarm(c, 2) == 0, "the alarm to clear", 30)
            for i in (1, 2):
                assert (disks[i] / f"node{i}" / RESERVE_FILE).stat().st_size == 4 << 20
            assert not c.status(1).alarms
            cl.put(b"after", b"space returned")
            acked[b"after"] = b"space returned"
        check_everywhere(c, acked, deleted)
        for i in (1, 2, 3):
            assert c.procs[i].poll() is None, c.log_text(i)[-2000:]


def kv_status(c: LocalCluster, i: int, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "raftkv.cli.kv", "--endpoints", c.address(i), "status", *args],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_a_leader_stalled_on_a_full_disk_claims_no_role_and_rejoins_as_a_follower(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        disk = on_small_disk(tmp_path, stack, 1)
        c = LocalCluster(tmp_path, n=3).start_all()
        stack.callback(c.stop_all)
        lead_with(c, 1)
        acked: dict[bytes, bytes] = {}
        with Client(c.address(1), timeout=3) as cl:
            for i in range(10):
                k, v = b"before-%d" % i, os.urandom(50_000)
                cl.put(k, v)
                acked[k] = v
            settle()
            fill(disk / "filler")
            put_until_refused(cl, acked, b"during")
            # The reserve that let the full leader go on is taken too: its next persist waits for space.
            fill(disk / "filler-2")
            acked.pop(b"before-0")  # its delete's outcome is unknown: the followers may commit it
            try:
                cl.delete(b"before-0")
            except RaftKVError as e:
                assert e.code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED), e
        # Nodes 2 and 3 elect a leader without it; the stalled node must not go on claiming to lead.
        new = wait_for(lambda: c.wait_leader(among=[2, 3]), "a leader among 2 and 3", 60)
        assert new in (2, 3)
        wait_for(lambda: metric(c, 1, "raftkv_is_leader") == 0, "node 1's raftkv_is_leader to drop to 0", 10)
        assert metric(c, 1, "raftkv_has_leader") == 0 and alarm(c, 1) == 1
        st = c.status(1)
        assert st.role == "stalled" and st.leader_id == 0, st
        assert st.alarms and st.alarms[0].startswith("NOSPACE: node 1 cannot persist"), st
        assert "takes no writes" in st.alarms[0], st.alarms
        shown = json.loads(kv_status(c, 1, "-w", "json"))
        assert shown[0]["role"] == "stalled", shown
        assert f"{c.address(1)}: ALARM NOSPACE: node 1 cannot persist" in kv_status(c, 1)
        assert c.procs[1].poll() is None
        # The healthy pair takes writes meanwhile.
        with Client([c.address(2), c.address(3)], timeout=10) as cl:
            for i in range(5):
                k, v = b"meanwhile-%d" % i, os.urandom(1000)
                cl.put(k, v)
                acked[k] = v
        # Space returns: node 1 persists what waited, follows the new leader, and the alarm clears.
        (disk / "filler").unlink()
        (disk / "filler-2").unlink()
        wait_for(lambda: alarm(c, 1) == 0, "node 1's alarm to clear", 60)
        wait_for(lambda: c.status(1).role == "follower" and c.status(1).leader_id in (2, 3), "node 1 to follow", 30)
        assert metric(c, 1, "raftkv_is_leader") == 0 and metric(c, 1, "raftkv_has_leader") == 1
        check_everywhere(c, acked, [])
