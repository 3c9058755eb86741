"""Leases and locks on real `raftkv serve` processes: keys deleted through the log when a lease is not kept
alive (watchers see the delete), kept while it is (across a leader's kill -9), bad lease requests refused
with precise statuses; locks ordered by revision with fencing tokens that stop a stale holder's writes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from raftkv.client import InvalidArgumentError, NotFoundError, RaftKVError
from raftkv.client.requests import op_put
from raftkv.proto.stubs import watch_pb2 as wpb

from .local_cluster import LocalCluster
from .observe import sample, scrape


def total(cluster: LocalCluster, name: str) -> float:
    """A metric summed over every running node (which node leads, and so counts, may change)."""
    return sum(sample(scrape(cluster, i), name) for i in sorted(cluster.procs))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(Path(tmp_path_factory.mktemp("leases")), extra=["--max-lease-ttl", "3600"]).start_all()
    try:
        yield c
    finally:
        c.stop_all()


def _extend(it: Iterator[wpb.WatchResponse], seen: list[wpb.Event]) -> None:
    try:
        for r in it:
            seen.extend(r.events)
    except RaftKVError:
        pass


def wait_until(cond, timeout: float = 20.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_expired_lease_deletes_its_keys_through_the_log(cluster: LocalCluster) -> None:
    expired_before = total(cluster, "raftkv_lease_expired_total")
    with cluster.client() as c:
        # 3 s: long enough that the puts and the TimeToLive below come before the expiry even on a busy
        # machine (with 1 s a starved run saw the lease expire before TimeToLive).
        lease = c.lease_grant(3)
        assert lease.ttl == 3 and lease.id > 0
        assert sample(scrape(cluster, cluster.wait_leader()), "raftkv_leases") >= 1
        r = c.put("svc/a", "up", lease=lease.id)
        c.put("svc/b", "up", lease=lease.id)
        c.put("svc/plain", "stays")
        ttl = c.lease_time_to_live(lease.id, keys=True)
        assert ttl.granted_ttl == 3 and set(ttl.keys) == {b"svc/a", b"svc/b"}
        assert c.get("svc/a").kv.lease == lease.id
        seen: list[wpb.Event] = []
        it = c.watch("svc/", prefix=True, after_revision=r.meta.index)
        threading.Thread(target=lambda: _extend(it, seen), daemon=True).start()
        assert wait_until(lambda: not c.get("svc/a").found and not c.get("svc/b").found)
        assert c.get("svc/plain").found
        assert wait_until(lambda: sum(e.type == wpb.Event.DELETE for e in seen) == 2)
        dels = [e for e in seen if e.type == wpb.Event.DELETE]
        assert dels[0].kv.mod_revision == dels[1].kv.mod_revision  # one revoke, one revision
        assert total(cluster, "raftkv_watches") >= 1  # the watch above is still open
        assert wait_until(lambda: total(cluster, "raftkv_lease_expired_total") > expired_before)
        for i in cluster.procs:  # every node deleted them (at that revision)
            cluster.wait_applied(i, dels[0].kv.mod_revision)
        with pytest.raises(NotFoundError) as e:
            c.lease_time_to_live(lease.id)
        assert "not found" in str(e.value)
        with pytest.raises(NotFoundError):
            c.lease_keep_alive_once(lease.id)  # keep-alive of an expired lease


def test_kept_alive_lease_outlives_its_ttl_and_revoke_ends_it(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        lease = c.lease_grant(1).id
        c.put("ka/k", "v", lease=lease)
        renewed_before = total(cluster, "raftkv_lease_keepalives_total")
        ka = c.keep_alive(lease, interval=0.2)
        time.sleep(2.5)
        assert c.get("ka/k").found
        assert total(cluster, "raftkv_lease_keepalives_total") >= renewed_before + 3
        assert any(s.id == lease for s in c.lease_list().leases)
        ka.stop()
        assert c.lease_revoke(lease).deleted == 1
        assert not c.get("ka/k").found


def test_bad_lease_requests(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        for ttl in (0, -5, 3601):
            with pytest.raises(InvalidArgumentError) as e:
                c.lease_grant(ttl)
            assert "TTL" in str(e.value)
        with pytest.raises(NotFoundError) as f:
            c.put("bad/k", "v", lease=424242)
        assert f.value.reason == "LEASE_NOT_FOUND" and not c.get("bad/k").found
        with pytest.raises(NotFoundError):
            c.lease_revoke(424242)
        with pytest.raises(NotFoundError):
            c.lease_keep_alive_once(424242)
        with pytest.raises(InvalidArgumentError):
            c.lease_revoke(-1)
        lid = c.lease_grant(60, lease_id=777).id
        assert lid == 777
        with pytest.raises(Exception) as g:  # noqa: PT011
            c.lease_grant(60, lease_id=777)
        assert getattr(g.value, "code", None) == grpc.StatusCode.ALREADY_EXISTS
        c.lease_revoke(777)


def test_lock_orders_holders_and_fences_a_stale_one(cluster: LocalCluster) -> None:
    with cluster.client() as a, cluster.client() as b:
        la = a.lock("job", ttl=2)
        got: list = []
        t = threading.Thread(target=lambda: got.append(b.lock("job", ttl=5)), daemon=True)
        t.start()
        time.sleep(0.5)
        assert not got  # b waits behind a
        assert a.fenced(la, [op_put("job/counter", "a1")]).succeeded
        # a "pauses" past its lease: its keep-alive stops, the lease expires, b takes the lock.
        la.keep_alive.stop()
        t.join(20)
        assert got, "the waiter did not get the lock after the holder's lease expired"
        lb = got[0]
        assert lb.token > la.token
        assert not a.fenced(la, [op_put("job/counter", "a2")]).succeeded  # the stale holder is refused
        assert b.fenced(lb, [op_put("job/counter", "b1")]).succeeded
        assert a.get("job/counter").kv.value == b"b1"
        b.unlock(lb)


def kv_cmd(cluster: LocalCluster) -> list[str]:
    return [sys.executable, "-m", "raftkv.cli.kv", "--command-timeout", "10", "--endpoints", cluster.endpoints]


def kv(cluster: LocalCluster, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*kv_cmd(cluster), *args], capture_output=True, text=True, timeout=timeout)


def test_cli_lease_watch_lock_compact(cluster: LocalCluster) -> None:
    g = kv(cluster, "lease", "grant", "30")
    assert g.returncode == 0, g.stderr
    lid = g.stdout.split()[1]
    p = kv(cluster, "put", "cli/k", "v", "--lease", lid)
    assert p.returncode == 0, p.stderr
    rev = int(p.stdout.split("index ")[1].split(",")[0])
    t = kv(cluster, "lease", "timetolive", lid, "--keys")
    assert t.returncode == 0 and "cli/k" in t.stdout and "TTL(30s)" in t.stdout
    kv(cluster, "put", "cli/k", "w", "--lease", lid)
    w = kv(cluster, "watch", "cli/k", "--rev", str(rev - 1), "--prev-kv", "--count", "2")
    assert w.returncode == 0, w.stderr
    assert w.stdout.split("\n")[:6] == ["PUT", "cli/k", "v", "PUT", "cli/k", "w"]
    r = kv(cluster, "lease", "revoke", lid)
    assert r.returncode == 0 and "1 keys deleted" in r.stdout
    bad = kv(cluster, "lease", "revoke", lid)
    assert bad.returncode != 0 and bad.stderr.startswith("Error: ") and "not found" in bad.stderr
    assert "Traceback" not in bad.stderr
    bad = kv(cluster, "lease", "grant", "0")
    assert bad.returncode != 0 and "TTL" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    lk = kv(cluster, "lock", "cli-job", "--", sys.executable, "-c", "import os; print('token', os.environ['KV_LOCK_TOKEN'])")
    assert lk.returncode == 0, lk.stderr
    assert int(lk.stdout.split()[1]) > 0
    ok = kv(cluster, "lock", "cli-job", "--", *kv_cmd(cluster), "put", "--fence", "cli/fenced", "1")
    assert ok.returncode == 0, ok.stderr
    stale = subprocess.run([*kv_cmd(cluster), "put", "--fence", "cli/fenced", "2"], capture_output=True, text=True,
                           timeout=30, env={**os.environ, "KV_LOCK_KEY": "__lock/cli-job/00", "KV_LOCK_TOKEN": "5"})
    assert stale.returncode == 1 and "write refused" in stale.stderr and "fenced" in stale.stderr
    with cluster.client() as cl:
        assert cl.get("cli/fenced").kv.value == b"1"
    c = kv(cluster, "compact", str(rev))
    assert c.returncode == 0 and f"oldest revision is {rev}" in c.stdout
    w = kv(cluster, "watch", "cli/k", "--rev", str(rev - 5), "--count", "1")
    assert w.returncode != 0 and "compacted" in w.stderr and str(rev) in w.stderr


def test_cli_elect_campaign_and_observe(cluster: LocalCluster) -> None:
    base = [sys.executable, "-m", "raftkv.cli.kv", "--endpoints", cluster.endpoints]
    leader = subprocess.Popen([*base, "elect", "svc-e", "node-a", "--ttl", "5"], stdout=subprocess.PIPE, text=True)
    observer = None
    try:
        assert leader.stdout is not None
        key = leader.stdout.readline().strip()  # printed once it leads: its key, then its token
        token = int(leader.stdout.readline().split()[1])
        assert key.startswith("__elect/svc-e/") and token > 0
        observer = subprocess.Popen([*base, "elect", "-l", "svc-e"], stdout=subprocess.PIPE, text=True)
        assert observer.stdout is not None
        assert observer.stdout.readline().strip() == "node-a"
        with cluster.client() as c:
            assert c.leader("svc-e").value == b"node-a"
        leader.terminate()  # resigns: its key goes with its lease
        assert leader.wait(15) == 0
        with cluster.client() as c:
            assert wait_until(lambda: c.leader("svc-e") is None)
    finally:
        for p in (leader, observer):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def test_lease_survives_a_leader_kill(cluster: LocalCluster) -> None:
    """Last: kills the leader. A lease kept alive across the failover keeps its key."""
    with cluster.client() as c:
        lease = c.lease_grant(2).id
        c.put("fo/k", "v", lease=lease)
        ka = c.keep_alive(lease, interval=0.3)
        leader = cluster.wait_leader()
        cluster.kill(leader)
        cluster.wait_leader([i for i in cluster.procs if i != leader])
        time.sleep(3)
        assert c.get("fo/k").found
        ka.stop()
        assert wait_until(lambda: not c.get("fo/k").found, 30)
