"""raftkv's etcd v3 API checked with clients raftkv did not write: Debian's etcdctl 3.4 (outputs and exit
codes compared with a real etcd 3.4's recorded transcript, tests/integration/data/) and the PyPI `aetcd`
library; raftkv's levels through gRPC metadata; membership and leadership through etcdctl on a real
cluster. One 3-node cluster for the module; the cases run in order against its empty store."""

from __future__ import annotations

import base64
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from benchmarks.ports import free_port
from raftkv.proto.etcd_stubs import rpc_pb2 as epb
from raftkv.proto.etcd_stubs import rpc_pb2_grpc as epb_grpc

from . import etcdctl_cases as cases
from .local_cluster import LocalCluster

LIMITS = ["--max-request-bytes", str(cases.MAX_REQUEST_BYTES), "--max-value-bytes", "2048",
          "--max-key-bytes", "512"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    if not Path(cases.ETCDCTL).exists():
        pytest.fail("etcdctl (Debian's etcd-client) is missing: run `bash tests/install_system_deps.sh`")
    c = LocalCluster(tmp_path_factory.mktemp("etcd-api"), extra=LIMITS).start_all()
    try:
        yield c
    finally:
        c.stop_all()


def etcdctl(c: LocalCluster, *args: str, endpoints: str | None = None, stdin: str = "",
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([cases.ETCDCTL, f"--endpoints={endpoints or c.endpoints}", "--command-timeout=15s",
                           *args], input=stdin, capture_output=True, text=True, env=cases.env(), timeout=timeout)


def follower_of(c: LocalCluster) -> int:
    leader = c.wait_leader()
    return next(i for i in sorted(c.ports) if i != leader)


def test_etcdctl_output_and_exit_codes_match_etcd(cluster: LocalCluster, tmp_path: Path) -> None:
    """Every case of etcdctl_cases.py, on a follower (writes forwarded to the leader), against etcd's
    transcript: exit code, `Error:` line, text output exactly, JSON and table output by shape."""
    recorded = json.loads(cases.TRANSCRIPT.read_text())["cases"]
    endpoint = cluster.address(follower_of(cluster))
    got = cases.run_all(endpoint, {"NEW_PEER": f"http://127.0.0.1:{free_port()}",
                                   "NEW_PEER2": f"http://127.0.0.1:{free_port()}", "SNAP": str(tmp_path / "s.db")})
    mismatches = []
    for case in cases.CASES:
        want, have = cases.comparable(case, recorded[case.name]), cases.comparable(case, got[case.name])
        if want != have:
            mismatches.append(f"{case.name} ({' '.join(got[case.name]['args'])}):\n  etcd:   {want!r}\n"
                              f"  raftkv: {have!r}")
    assert not mismatches, "etcdctl saw raftkv differ from etcd:\n" + "\n".join(mismatches)


def test_snapshot_hashkv_and_auth_with_etcdctl(cluster: LocalCluster, tmp_path: Path) -> None:
    """`etcdctl snapshot save` writes raftkv's backup (a file `kv snapshot status` verifies, etcd's
    `snapshot status` cannot read); `endpoint hashkv` on every member gives one hash when nothing is
    written between; auth cannot be enabled."""
    from raftkv.backup_file import summarize

    etcdctl(cluster, "put", "snap/k", "v")
    path = tmp_path / "s.db"
    snap = etcdctl(cluster, "snapshot", "save", str(path), endpoints=cluster.address(follower_of(cluster)))
    assert snap.returncode == 0, snap.stderr
    assert snap.stdout == f"Snapshot saved at {path}\n"
    summary = summarize(path)
    assert summary.header.revision > 0 and summary.keys >= 1
    status = etcdctl(cluster, "snapshot", "status", str(path))
    assert status.returncode != 0  # not etcd's bolt format (README says so)
    restored = subprocess.run([str(Path(sys.executable).parent / "raftkv"), "restore", str(path), "--data-dir",
                               str(tmp_path / "restored"), "--id", "1", "--peers", f"1=127.0.0.1:{free_port()}"],
                              capture_output=True, text=True, timeout=60)
    assert restored.returncode == 0, restored.stderr
    hashkv = etcdctl(cluster, "endpoint", "hashkv", "-w", "json")
    assert hashkv.returncode == 0, hashkv.stderr
    rows = json.loads(hashkv.stdout)
    assert len(rows) == len(cluster.ports)
    assert len({r["HashKV"]["hash"] for r in rows}) == 1, rows
    assert {r["HashKV"]["header"]["member_id"] for r in rows} == set(cluster.ports)
    auth = etcdctl(cluster, "auth", "enable", endpoints=cluster.address(1))
    assert auth.returncode != 0 and "raftkv offers no authentication" in auth.stderr, auth.stderr


def _watch(stub: epb_grpc.WatchStub, *requests: epb.WatchRequest) -> tuple[Any, Any]:
    """A watch stream fed from a queue: (the queue, the response iterator)."""
    q: queue.Queue[epb.WatchRequest | None] = queue.Queue()
    for r in requests:
        q.put(r)

    def gen() -> Iterator[epb.WatchRequest]:
        while (r := q.get()) is not None:
            yield r

    return q, stub.Watch(gen(), timeout=60)


def _create(**kw: Any) -> epb.WatchRequest:
    return epb.WatchRequest(create_request=epb.WatchCreateRequest(**kw))


def test_watch_and_lease_services_on_a_follower(cluster: LocalCluster) -> None:
    """etcd's Watch and Lease on a follower, as etcd sends them: created in order with ids from 0,
    start_revision inclusive, NOPUT filter, prev_kv, fragments, progress, cancel, compacted; leases granted,
    kept alive (relayed to the leader), listed, their keys deleted and watched going when revoked."""
    follower = follower_of(cluster)
    with grpc.insecure_channel(cluster.address(follower)) as ch:
        kv, watch, lease = epb_grpc.KVStub(ch), epb_grpc.WatchStub(ch), epb_grpc.LeaseStub(ch)
        first = kv.Put(epb.PutRequest(key=b"ws/a", value=b"1"), timeout=10).header.revision
        kv.Put(epb.PutRequest(key=b"ws/a", value=b"2"), timeout=10)
        kv.DeleteRange(epb.DeleteRangeRequest(key=b"ws/a"), timeout=10)
        kv.Compact(epb.CompactionRequest(revision=first), timeout=10)  # history from `first` on (every node)
        kv.Range(epb.RangeRequest(key=b"ws/a"), timeout=10)  # linearizable: the follower applied the compaction
        q, responses = _watch(watch, _create(key=b"ws/", range_end=b"ws0", start_revision=first, prev_kv=True),
                              _create(key=b"ws/", range_end=b"ws0", start_revision=first,
                                      filters=[epb.WatchCreateRequest.NOPUT]),
                              _create(key=b"ws/", range_end=b"ws0", start_revision=1))
        created: list[int] = []
        seen: dict[int, list[tuple[int, bytes, bytes]]] = {0: [], 1: []}
        compacted = None
        while len(seen[0]) < 3 or not seen[1] or compacted is None:
            r = next(responses)
            if r.created:
                created.append(r.watch_id)
            elif r.watch_id == 2:
                compacted = r
            else:
                seen[r.watch_id] += [(e.type, e.kv.value, e.prev_kv.value) for e in r.events]
        assert created == [0, 1, 2]  # ids from 0, in the order of the creates
        assert seen[0] == [(0, b"1", b""), (0, b"2", b"1"), (1, b"", b"2")]  # PUT=0, DELETE=1
        assert seen[1] == [(1, b"", b"")]
        assert compacted.canceled and compacted.compact_revision > 1
        # fragment: one revision's events over several responses when they exceed --max-request-bytes
        for i in range(3):
            last = kv.Put(epb.PutRequest(key=b"fr/%d" % i, value=b"x" * 2000), timeout=10).header.revision
        cluster.wait_applied(follower, last)  # the watch starts after the puts, on this follower too
        q.put(_create(key=b"fr/", range_end=b"fr0", prev_kv=True, fragment=True, watch_id=7))
        assert next(responses).created
        kv.DeleteRange(epb.DeleteRangeRequest(key=b"fr/", range_end=b"fr0"), timeout=10)
        parts = []
        while not parts or parts[-1].fragment:
            r = next(responses)
            if r.watch_id == 7:
                parts.append(r)
        assert len(parts) > 1 and sum(len(p.events) for p in parts) == 3
        assert len({p.header.revision for p in parts}) == 1
        q.put(epb.WatchRequest(cancel_request=epb.WatchCancelRequest(watch_id=7)))
        while not (r := next(responses)).canceled:
            pass
        assert r.watch_id == 7
        q.put(epb.WatchRequest(progress_request=epb.WatchProgressRequest()))
        while (r := next(responses)).watch_id != -1:
            pass
        assert not r.events and r.header.revision >= parts[0].header.revision
        # leases, through the follower
        granted = lease.LeaseGrant(epb.LeaseGrantRequest(TTL=30), timeout=10)
        assert granted.ID > 0 and granted.TTL == 30
        minimum = lease.LeaseGrant(epb.LeaseGrantRequest(TTL=0), timeout=10)
        assert minimum.TTL >= 1
        kv.Put(epb.PutRequest(key=b"ws/leased", value=b"v", lease=granted.ID), timeout=10)
        assert kv.Range(epb.RangeRequest(key=b"ws/leased"), timeout=10).kvs[0].lease == granted.ID
        alive = list(lease.LeaseKeepAlive(iter([epb.LeaseKeepAliveRequest(ID=granted.ID),
                                                epb.LeaseKeepAliveRequest(ID=granted.ID + 10**9)]), timeout=10))
        assert [(a.ID, a.TTL) for a in alive] == [(granted.ID, 30), (granted.ID + 10**9, 0)]
        ttl = lease.LeaseTimeToLive(epb.LeaseTimeToLiveRequest(ID=granted.ID, keys=True), timeout=10)
        assert (ttl.grantedTTL, list(ttl.keys)) == (30, [b"ws/leased"]) and 0 < ttl.TTL <= 30
        assert granted.ID in {x.ID for x in lease.LeaseLeases(epb.LeaseLeasesRequest(), timeout=10).leases}
        lease.LeaseRevoke(epb.LeaseRevokeRequest(ID=granted.ID), timeout=10)
        while not any(e.kv.key == b"ws/leased" and e.type == 1 for e in next(responses).events):
            pass  # watch 0 sees the revoke delete the key
        assert not kv.Range(epb.RangeRequest(key=b"ws/leased"), timeout=10).kvs
        assert lease.LeaseTimeToLive(epb.LeaseTimeToLiveRequest(ID=granted.ID), timeout=10).TTL == -1
        with pytest.raises(grpc.RpcError) as e:
            kv.Put(epb.PutRequest(key=b"ws/x", value=b"v", lease=granted.ID), timeout=10)
        assert (e.value.code(), e.value.details()) == (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
        with pytest.raises(grpc.RpcError) as e:
            lease.LeaseRevoke(epb.LeaseRevokeRequest(ID=granted.ID), timeout=10)
        assert e.value.details() == "etcdserver: requested lease not found"
        q.put(None)
        responses.cancel()


def _trailers(call: grpc.Call) -> dict[str, str]:
    return {k: v for k, v in call.trailing_metadata() or ()}


def test_raftkv_levels_through_metadata(cluster: LocalCluster) -> None:
    """raftkv-ack and raftkv-consistency come in as metadata; the level achieved and a session token come
    back in trailing metadata; a session token read on a follower sees the write; a bad level is
    INVALID_ARGUMENT."""
    leader = cluster.wait_leader()
    follower = follower_of(cluster)
    with grpc.insecure_channel(cluster.address(leader)) as lch, \
            grpc.insecure_channel(cluster.address(follower)) as fch:
        kv, fkv = epb_grpc.KVStub(lch), epb_grpc.KVStub(fch)
        reply, call = kv.Put.with_call(epb.PutRequest(key=b"lvl/a", value=b"1"), timeout=10,
                                       metadata=(("raftkv-ack", "semi_sync;min_replicas=1;timeout_ms=5000"),))
        t = _trailers(call)
        assert t["raftkv-ack-achieved"].split(";")[0] == "semi_sync"
        assert reply.header.revision > 0 and reply.header.member_id == leader
        token = t["raftkv-session-token"]
        reply, call = kv.Put.with_call(epb.PutRequest(key=b"lvl/b", value=b"2"), timeout=10)
        assert _trailers(call)["raftkv-ack-achieved"] == "majority"
        # Session read on a follower: at least the write's index is applied there before it answers.
        reply, call = fkv.Range.with_call(epb.RangeRequest(key=b"lvl/a"), timeout=10,
                                          metadata=(("raftkv-session-token", token),))
        assert [kv.value for kv in reply.kvs] == [b"1"]
        assert _trailers(call)["raftkv-consistency-achieved"] == "session"
        reply, call = fkv.Range.with_call(epb.RangeRequest(key=b"lvl/a"), timeout=10, metadata=(
            ("raftkv-consistency", "bounded_staleness;max_staleness_ms=60000"),))
        achieved = _trailers(call)["raftkv-consistency-achieved"]
        assert achieved.startswith("bounded_staleness;staleness_bound_ms=")
        assert _trailers(call)["raftkv-served-by"] == str(follower)
        reply, call = fkv.Range.with_call(epb.RangeRequest(key=b"lvl/a", serializable=True), timeout=10)
        assert _trailers(call)["raftkv-consistency-achieved"] == "serializable"
        reply, call = fkv.Range.with_call(epb.RangeRequest(key=b"lvl/a"), timeout=10)
        assert _trailers(call)["raftkv-consistency-achieved"] == "linearizable"
        for md in ((("raftkv-ack", "fastest"),), (("raftkv-ack", "semi_sync;min_replicas=x"),),
                   (("raftkv-ack", "sync;colour=red"),)):
            with pytest.raises(grpc.RpcError) as e:
                kv.Put(epb.PutRequest(key=b"lvl/c", value=b"3"), timeout=10, metadata=md)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, md
        for bad in ("!!", "AAAA"):  # not base64; base64 but no token
            with pytest.raises(grpc.RpcError) as e:
                fkv.Range(epb.RangeRequest(key=b"lvl/a"), timeout=10, metadata=(("raftkv-session-token", bad),))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))  # a token is urlsafe base64 text


def test_every_response_carries_the_header(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    with grpc.insecure_channel(cluster.address(leader)) as ch:
        kv, cl, mt = epb_grpc.KVStub(ch), epb_grpc.ClusterStub(ch), epb_grpc.MaintenanceStub(ch)
        put = kv.Put(epb.PutRequest(key=b"hdr", value=b"v"), timeout=10)
        replies = [put, kv.Range(epb.RangeRequest(key=b"hdr"), timeout=10),
                   kv.DeleteRange(epb.DeleteRangeRequest(key=b"hdr"), timeout=10),
                   kv.Txn(epb.TxnRequest(), timeout=10),
                   kv.Compact(epb.CompactionRequest(revision=put.header.revision), timeout=10),
                   cl.MemberList(epb.MemberListRequest(), timeout=10), mt.Status(epb.StatusRequest(), timeout=10),
                   mt.Alarm(epb.AlarmRequest(), timeout=10), mt.Defragment(epb.DefragmentRequest(), timeout=10)]
        ids = {r.header.cluster_id for r in replies}
        assert len(ids) == 1 and 0 not in ids
        assert {r.header.member_id for r in replies} == {leader}
        assert all(r.header.raft_term > 0 for r in replies)
        assert all(r.header.revision >= put.header.revision for r in replies[1:5])
        kv.Put(epb.PutRequest(key=b"hdr/1", value=b"a"), timeout=10)
        kv.Put(epb.PutRequest(key=b"hdr/2", value=b"b"), timeout=10)
        counted = kv.Range(epb.RangeRequest(key=b"hdr/", range_end=b"hdr0", count_only=True), timeout=10)
        assert (counted.count, list(counted.kvs)) == (2, [])
        # A Range at the current revision is served; one revision older is etcd's "compacted".
        deadline = time.monotonic() + 20
        while True:
            now = kv.Range(epb.RangeRequest(key=b"hdr"), timeout=10).header.revision
            try:
                at = kv.Range(epb.RangeRequest(key=b"hdr", revision=now), timeout=10)
                break
            except grpc.RpcError as err:  # only if another entry applied in between
                assert err.code() == grpc.StatusCode.OUT_OF_RANGE, err
                assert time.monotonic() < deadline
        assert at.header.revision == now
        with pytest.raises(grpc.RpcError) as e:
            kv.Range(epb.RangeRequest(key=b"hdr", revision=now - 1), timeout=10)
        assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert e.value.details() == "etcdserver: mvcc: required revision has been compacted"


def test_lock_excludes_and_watch_survives_a_node_switch(cluster: LocalCluster) -> None:
    """etcdctl lock: a second locker waits until the first lets go. etcdctl watch on two followers: each
    in turn is stopped, and the watch goes on (clientv3 resumes it on the other) without losing events.
    Before the membership test: a founding member restarts with the founding --peers."""
    first = subprocess.Popen([cases.ETCDCTL, f"--endpoints={cluster.endpoints}", "lock", "excl"], text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cases.env())
    try:
        assert first.stdout is not None and first.stdout.readline().startswith("excl/")
        second = subprocess.Popen([cases.ETCDCTL, f"--endpoints={cluster.endpoints}", "lock", "excl", "echo",
                                   "second"], text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=cases.env())
        time.sleep(1.5)
        assert second.poll() is None, "the second locker got the lock while the first held it"
        first.send_signal(signal.SIGINT)
        out, err = second.communicate(timeout=30)
        assert (second.returncode, out) == (0, "second\n"), err
    finally:
        for p in (first,):
            if p.poll() is None:
                p.kill()
            p.wait()
    leader = cluster.wait_leader()
    followers = [i for i in sorted(cluster.ports) if i != leader][:2]
    w = subprocess.Popen([cases.ETCDCTL, f"--endpoints={','.join(cluster.address(i) for i in followers)}", "watch",
                          "switch"], text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cases.env())
    assert w.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in w.stdout], daemon=True).start()  # type: ignore[union-attr]

    def value_seen(v: str) -> None:
        deadline = time.monotonic() + 40
        got: list[str] = []
        while v + "\n" not in got:
            got.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))

    try:
        with grpc.insecure_channel(cluster.address(leader)) as ch:
            kv = epb_grpc.KVStub(ch)
            time.sleep(1)  # the watch is created
            kv.Put(epb.PutRequest(key=b"switch", value=b"v0"), timeout=10)
            value_seen("v0")
            for n, down in enumerate(followers, 1):
                cluster.stop(down)
                kv.Put(epb.PutRequest(key=b"switch", value=b"v%d" % n), timeout=10)
                value_seen(f"v{n}")
                cluster.start(down)
                try:
                    cluster.wait_applied(down, kv.Range(epb.RangeRequest(key=b"switch"), timeout=10).header.revision,
                                         timeout=60)
                except AssertionError:
                    raise AssertionError(cluster.log_text(down)[-3000:]) from None
    finally:
        w.kill()
        w.wait()
    cluster.wait_leader(timeout=60)


def test_membership_and_move_leader_with_etcdctl(cluster: LocalCluster) -> None:
    """member add --learner, start the node, member promote, move-leader to it, endpoint status shows
    it leading, member remove of another learner; as etcdctl prints them."""
    new = max(cluster.ports) + 1
    cluster.add_node(new)
    add = etcdctl(cluster, "member", "add", f"node{new}", "--learner",
                  f"--peer-urls=http://{cluster.address(new)}")
    assert add.returncode == 0, add.stderr
    assert re.match(rf"Member +{new:x} added to cluster ", add.stdout), add.stdout
    unstarted = etcdctl(cluster, "member", "list")
    assert f"{new:x}, unstarted, , http://{cluster.address(new)}, , true" in unstarted.stdout, unstarted.stdout
    cluster.start(new, join=True)
    deadline = time.monotonic() + 60
    while True:  # the learner catches up, then promotion is accepted
        promote = etcdctl(cluster, "member", "promote", f"{new:x}")
        if promote.returncode == 0:
            break
        # not caught up yet; or the just-started node, asked first, does not know the leader yet
        assert ("can only promote a learner member which is in sync with leader" in promote.stderr
                or "etcdserver: no leader" in promote.stderr), promote.stderr
        assert time.monotonic() < deadline, "learner never caught up"
        time.sleep(0.5)
    assert re.match(rf"Member +{new:x} promoted in cluster ", promote.stdout), promote.stdout
    listed = json.loads(etcdctl(cluster, "member", "list", "-w", "json").stdout)
    assert sorted(m["ID"] for m in listed["members"]) == sorted(cluster.ports)
    assert not any(m.get("isLearner") for m in listed["members"])
    deadline = time.monotonic() + 30
    while True:  # a just-promoted voter takes over once it is healthy (caught up, knows it is a voter)
        move = etcdctl(cluster, "move-leader", f"{new:x}")
        if move.returncode == 0 or "bad leader transferee" not in move.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert move.returncode == 0, move.stderr
    assert re.search(rf"Leadership transferred from +[0-9a-f]+ to +{new:x}", move.stdout), move.stdout
    status = json.loads(etcdctl(cluster, "endpoint", "status", "-w", "json",
                                endpoints=cluster.address(new)).stdout)
    assert status[0]["Status"]["leader"] == new
    bad = etcdctl(cluster, "move-leader", "ff")
    assert bad.returncode != 0 and "etcdserver: bad leader transferee" in bad.stderr
    health = etcdctl(cluster, "endpoint", "health")
    assert health.returncode == 0 and health.stderr.count("is healthy") == len(cluster.ports)


def test_aetcd_library_drives_raftkv(cluster: LocalCluster) -> None:
    """The PyPI aetcd client (its own generated stubs, in a process of its own) on a follower."""
    endpoint = cluster.address(follower_of(cluster))
    p = subprocess.run([sys.executable, "-m", "tests.integration.aetcd_driver", endpoint], capture_output=True,
                       text=True, timeout=60, cwd=Path(__file__).parents[2])
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["get"][0] == "1" and out["get"][1] == 1 and out["get"][2] == out["put_revision"]
    assert out["get_missing"] is None
    assert out["prefix"] == ["lib/a", "lib/b"]
    assert out["prev_kv"] == "1"
    assert out["txn_succeeded"] is True
    assert out["txn_failed_get"] == [False, ["3"]]
    assert out["lease"] == [30, ["lib/leased"], 30] and out["leased_after_revoke"] is None
    assert out["watch"] == ["1", True]
    assert out["lock"] == [True, False]
    assert out["deleted"] == 3
    assert out["members"] == sorted(out["members"]) and len(out["members"]) >= 3
    assert out["status"][0] == "3.4.0" and out["status"][1] > 0 and out["status"][2]
    assert out["alarms"] == []
    assert "etcdserver: requested lease not found" in out["lease_error"]
    assert out["bad_level_error"] == "InvalidArgumentError"
    assert out["semi_value"] == "s"
