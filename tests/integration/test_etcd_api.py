"""raftkv's etcd v3 API checked with clients raftkv did not write: Debian's etcdctl 3.4 (outputs and exit
codes compared with a real etcd 3.4's recorded transcript, tests/integration/data/) and the PyPI `aetcd`
library; raftkv's levels through gRPC metadata; membership and leadership through etcdctl on a real
cluster. One 3-node cluster for the module; the cases run in order against its empty store."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

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


def test_etcdctl_output_and_exit_codes_match_etcd(cluster: LocalCluster) -> None:
    """Every case of etcdctl_cases.py, on a follower (writes forwarded to the leader), against etcd's
    transcript: exit code, `Error:` line, text output exactly, JSON and table output by shape."""
    recorded = json.loads(cases.TRANSCRIPT.read_text())["cases"]
    endpoint = cluster.address(follower_of(cluster))
    got = cases.run_all(endpoint, {"NEW_PEER": f"http://127.0.0.1:{free_port()}",
                                   "NEW_PEER2": f"http://127.0.0.1:{free_port()}"})
    mismatches = []
    for case in cases.CASES:
        want, have = cases.comparable(case, recorded[case.name]), cases.comparable(case, got[case.name])
        if want != have:
            mismatches.append(f"{case.name} ({' '.join(got[case.name]['args'])}):\n  etcd:   {want!r}\n"
                              f"  raftkv: {have!r}")
    assert not mismatches, "etcdctl saw raftkv differ from etcd:\n" + "\n".join(mismatches)


def test_what_is_not_served_says_why(cluster: LocalCluster, tmp_path: Path) -> None:
    """Snapshot and HashKV are not served yet: etcdctl fails with a message naming raftkv's command;
    watch and lease fail at once, saying they are not served yet; auth cannot be enabled."""
    snap = etcdctl(cluster, "snapshot", "save", str(tmp_path / "s.db"), endpoints=cluster.address(1))
    assert snap.returncode != 0
    assert "kv snapshot save" in snap.stderr
    hashkv = etcdctl(cluster, "endpoint", "hashkv", endpoints=cluster.address(1))
    assert hashkv.returncode != 0
    assert "kv check hash" in hashkv.stderr
    for args, why in ((("watch", "k"), "Watch yet"), (("lease", "grant", "10"), "leases yet"),
                      (("lock", "l"), "leases yet"), (("auth", "enable"), "raftkv offers no authentication")):
        p = etcdctl(cluster, *args, endpoints=cluster.address(1))
        assert p.returncode != 0 and why in p.stderr, (args, p.stderr)


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
                   kv.Txn(epb.TxnRequest(), timeout=10), kv.Compact(epb.CompactionRequest(revision=1), timeout=10),
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
        assert "can only promote a learner member which is in sync with leader" in promote.stderr, promote.stderr
        assert time.monotonic() < deadline, "learner never caught up"
        time.sleep(0.5)
    assert re.match(rf"Member +{new:x} promoted in cluster ", promote.stdout), promote.stdout
    listed = json.loads(etcdctl(cluster, "member", "list", "-w", "json").stdout)
    assert sorted(m["ID"] for m in listed["members"]) == sorted(cluster.ports)
    assert not any(m.get("isLearner") for m in listed["members"])
    move = etcdctl(cluster, "move-leader", f"{new:x}")
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
    assert out["deleted"] == 3
    assert out["members"] == sorted(out["members"]) and len(out["members"]) >= 3
    assert out["status"][0] == "3.4.0" and out["status"][1] > 0 and out["status"][2]
    assert out["alarms"] == []
    assert "etcdserver: requested lease not found" in out["lease_error"]
    assert out["bad_level_error"] == "InvalidArgumentError"
    assert out["semi_value"] == "s"
