"""A follower that comes back behind the leader's compacted log catches up by a streamed snapshot, on real
processes, with writes going on: the leader keeps serving (its /metrics answers all along, nobody is
elected), the follower ends with exactly the leader's records, and its peak memory stays within a fixed
bound whatever the data size (a few pieces of the stream are held at a time).

The data size is `RAFTKV_SNAPSHOT_TEST_MB` (default 40); the figures (leader /metrics response times,
follower peak RSS, catch-up time) are printed, so `-s` shows them (benchmarks/README.md, "Snapshot
catch-up")."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

import lmdb
import msgpack

from raftkv.client import AsyncClient, Client, RaftKVError
from raftkv.storage import LmdbNodeStore

from .local_cluster import LocalCluster
from .observe import events_named, sample, scrape, wait_for

MB = 1 << 20
DATA_MB = int(os.environ.get("RAFTKV_SNAPSHOT_TEST_MB", "40"))
VALUE = 1000  # fits an LMDB leaf page (no overflow pages), so the data's size on disk is its own
BASE_RSS = 160 * MB
"""A node's peak RSS with nothing to install (Python, gRPC, LMDB's map) and a few pieces of a snapshot,
with a margin: a follower measured 70 MiB after receiving 40 MiB, 86 MiB after 150 MiB."""


def _status(pid: int, field: str) -> int:
    """A memory figure of /proc/PID/status, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


def _hwm(pid: int) -> int:
    return _status(pid, "VmHWM")


async def _fill(endpoints: str, count: int, deadline: float) -> None:
    """`count` puts of VALUE bytes, 64 at a time, through the leader."""
    value = os.urandom(VALUE // 2).hex().encode()
    async with AsyncClient(endpoints, timeout=10, batching=True) as c:
        next_key = iter(range(count))

        async def writer() -> None:
            for i in next_key:
                assert time.monotonic() < deadline, "writing the data took too long"
                await c.put(b"snap/%08d" % i, value)

        await asyncio.gather(*(writer() for _ in range(64)))


class _Writer(threading.Thread):
    """Small writes through the leader while the follower catches up (at most `limit`)."""

    def __init__(self, endpoint: str, limit: int = 20_000) -> None:
        super().__init__(daemon=True)
        self.endpoint = endpoint
        self.limit = limit
        self.acked = 0
        self.failures: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        with Client(self.endpoint, timeout=10) as c:
            while not self.done.is_set() and self.acked < self.limit and not self.failures:
                try:
                    c.put(b"load/%06d" % self.acked, b"x" * 100)
                except RaftKVError as e:
                    self.failures.append(repr(e))
                    return
                self.acked += 1


class _Scraper(threading.Thread):
    """GET the leader's /metrics every 50 ms while the follower catches up; keeps each response time."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.times: list[float] = []
        self.failures: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:  # noqa: S310 - loopback test URL
                    r.read()
                self.times.append(time.monotonic() - t0)
            except OSError as e:
                self.failures.append(repr(e))
            self.done.wait(0.05)


def _records(path: Path, node_id: int) -> dict[bytes, bytes]:
    """Every record of a stopped node's state machine (the live `kv` generation), as stored."""
    store = LmdbNodeStore(path, node_id, None)
    try:
        with store.env.begin() as txn:
            return dict(txn.cursor(db=store.kv_db))
    finally:
        store.close()


def test_follower_catches_up_by_streamed_snapshot_without_stalling_the_leader(tmp_path: Path) -> None:
    flags = ["--snapshot-entries", "2000", "--snapshot-keep-entries", "100"]
    c = LocalCluster(tmp_path, extra=flags).start_all()
    try:
        leader = c.wait_leader()
        lagger = next(i for i in (1, 2, 3) if i != leader)
        other = next(i for i in (1, 2, 3) if i not in (leader, lagger))
        assert c.stop(lagger) == 0
        count = DATA_MB * MB // VALUE
        asyncio.run(_fill(c.address(leader), count, time.monotonic() + 300))
        with Client(c.address(leader)) as cl:
            cl.snapshot(endpoint=c.address(leader))
        before = {i: c.status(i) for i in (leader, other)}
        assert before[leader].snapshot_index > 0 and before[leader].leader_id == leader

        leader_hwm_before = _hwm(c.procs[leader].pid)
        scraper = _Scraper(f"http://127.0.0.1:{c.metrics_ports[leader]}/metrics")
        scraper.start()
        writer = _Writer(c.address(leader))
        writer.start()
        t0 = time.monotonic()
        c.start(lagger)
        c.wait_applied(lagger, before[leader].commit, timeout=240)
        catch_up = time.monotonic() - t0
        scraper.done.set()
        writer.done.set()
        scraper.join()
        writer.join()
        hwm = _hwm(c.procs[lagger].pid)
        leader_hwm = _hwm(c.procs[leader].pid)
        # What the leader's RSS holds now: its own memory, and pages of the LMDB file it mapped to read them.
        leader_anon, leader_file = (_status(c.procs[leader].pid, f) for f in ("RssAnon", "RssFile"))
        lag_anon, lag_file = (_status(c.procs[lagger].pid, f) for f in ("RssAnon", "RssFile"))

        after = {i: c.status(i) for i in (leader, other, lagger)}
        lag_status = after[lagger]
        print(f"\nsnapshot catch-up: {count} keys, {DATA_MB} MiB: catch-up {catch_up:.2f} s; leader /metrics "
              f"{len(scraper.times)} scrapes, max {max(scraper.times, default=0) * 1000:.0f} ms, "
              f"failed {len(scraper.failures)}; follower VmHWM {hwm / MB:.0f} MiB (now anon {lag_anon / MB:.0f}, "
              f"file {lag_file / MB:.0f}); leader VmHWM "
              f"{leader_hwm_before / MB:.0f} -> {leader_hwm / MB:.0f} MiB (now anon {leader_anon / MB:.0f}, "
              f"file {leader_file / MB:.0f}); {writer.acked} writes meanwhile; terms {before[leader].term} -> {after[leader].term}")
        assert lag_status.snapshot_index > 0, "the follower replayed the log instead of installing a snapshot"
        assert "installed snapshot" in c.log_text(lagger)
        # The leader stayed responsive and in charge: every scrape answered, nobody was elected.
        assert scraper.times and not scraper.failures, scraper.failures
        assert writer.acked > 0 and not writer.failures, writer.failures  # and took writes all along
        for i in (leader, other):
            assert after[i].term == before[i].term, (i, before[i].term, after[i].term)
            assert after[i].leader_changes == before[i].leader_changes, i
            assert after[i].leader_id == leader
        assert lag_status.term == before[leader].term and lag_status.leader_id == leader
        # Nor did the follower itself start an election after installing (while it installed, the leader's
        # heartbeats waited in its inbox).
        assert not [e for e in events_named(c, lagger, "leader changed") if e["role"] != "follower"]
        # Memory bounded by a few pieces, whatever the data size.
        assert hwm < BASE_RSS, f"follower peak RSS {hwm / MB:.0f} MiB for {DATA_MB} MiB"

        wait_for("the follower to apply the leader's last entry",
                 lambda: c.status(lagger).applied >= c.status(leader).applied)
        with Client(c.address(lagger)) as cl:
            for prefix, n in (("snap/", count), ("load/", writer.acked)):
                got = cl.range(prefix, prefix=True, count_only=True, consistency="serializable",
                               endpoint=c.address(lagger))
                assert got.count == n, prefix
    finally:
        c.stop_all()
    # Byte for byte: every record of the leader's kv, and nothing else.
    assert _records(tmp_path / f"node{lagger}", lagger) == _records(tmp_path / f"node{leader}", leader)


def _meta_applied(path: Path) -> int:
    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=16, subdir=True)
    try:
        with env.begin(db=env.open_db(b"meta", create=False)) as txn:
            raw = txn.get(b"applied")
        return int(msgpack.unpackb(raw)[0]) if raw is not None else 0
    finally:
        env.close()


def test_a_stream_broken_midway_leaves_the_follower_untouched_and_is_retried(tmp_path: Path) -> None:
    flags = ["--snapshot-entries", "2000", "--snapshot-keep-entries", "100"]
    c = LocalCluster(tmp_path, extra=flags).start_all()
    try:
        leader = c.wait_leader()
        lagger = next(i for i in (1, 2, 3) if i != leader)
        assert c.stop(lagger) == 0
        applied_before = _meta_applied(tmp_path / f"node{lagger}")
        count = 20 * MB // VALUE
        asyncio.run(_fill(c.address(leader), count, time.monotonic() + 300))
        with Client(c.address(leader)) as cl:
            cl.snapshot(endpoint=c.address(leader))
        commit = c.status(leader).commit
        c.start(lagger)
        # Freeze the follower as the stream starts (flow control then holds the leader's sender), and
        # kill it: the stream breaks midway.
        wait_for("the leader to start a snapshot stream",
                 lambda: events_named(c, leader, "sending snapshot"), every=0.005)
        c.signal(lagger, signal.SIGSTOP)
        c.kill(lagger)
        wait_for("the leader to notice the broken stream", lambda: events_named(c, leader, "snapshot send failed; "
                                                                                   "retrying"))
        assert not events_named(c, lagger, "installed snapshot")
        assert _meta_applied(tmp_path / f"node{lagger}") == applied_before
        assert _records(tmp_path / f"node{lagger}", lagger) == {}  # nothing of the half stream was installed
        c.start(lagger)
        c.wait_applied(lagger, commit, timeout=120)
        assert events_named(c, lagger, "installed snapshot")
        assert len(events_named(c, leader, "snapshot sent")) >= 1
        # /metrics counts both streams: the broken one failed, the next one installed.
        sent = wait_for("the leader's snapshot metrics", lambda: (m := scrape(c, leader))
                        and sample(m, "raftkv_snapshot_send_total", peer=str(lagger), outcome="ok") >= 1 and m)
        assert sample(sent, "raftkv_snapshot_send_total", peer=str(lagger), outcome="failed") >= 1
        assert sample(sent, "raftkv_snapshot_send_duration_seconds_count", peer=str(lagger)) >= 2
        wait_for("the follower's snapshot metrics", lambda: sample(
            scrape(c, lagger), "raftkv_snapshot_receive_total", peer=str(leader), outcome="ok") >= 1)
    finally:
        c.stop_all()
    assert _records(tmp_path / f"node{lagger}", lagger) == _records(tmp_path / f"node{leader}", leader)
