"""A follower that comes back behind the leader's compacted log catches up by a streamed snapshot, on real
processes: the leader keeps serving (its /metrics answers all along, nobody is elected), the follower
ends with exactly the leader's records, and its memory stays bounded by a fraction of the data it
received, not a multiple of it.

The data size is `RAFTKV_SNAPSHOT_TEST_MB` (default 40); the figures (leader /metrics response times,
follower peak RSS, catch-up time) are printed, so `-s` shows them (benchmarks/README.md, "Snapshot
catch-up")."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import urllib.request
from pathlib import Path

import lmdb

from raftkv.client import AsyncClient, Client

from .local_cluster import LocalCluster
from .observe import wait_for

MB = 1 << 20
DATA_MB = int(os.environ.get("RAFTKV_SNAPSHOT_TEST_MB", "40"))
VALUE = 1000  # fits an LMDB leaf page (no overflow pages), so the data's size on disk is its own
BASE_RSS = 160 * MB
"""A node's peak RSS with nothing to install (Python, gRPC, LMDB's map), with a margin."""


def _hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


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


def _records(path: Path) -> dict[bytes, bytes]:
    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=16, subdir=True)
    try:
        db = env.open_db(b"kv", create=False)
        with env.begin(db=db) as txn:
            return dict(txn.cursor())
    finally:
        env.close()


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

        scraper = _Scraper(f"http://127.0.0.1:{c.metrics_ports[leader]}/metrics")
        scraper.start()
        t0 = time.monotonic()
        c.start(lagger)
        c.wait_applied(lagger, before[leader].commit, timeout=240)
        catch_up = time.monotonic() - t0
        scraper.done.set()
        scraper.join()
        hwm = _hwm(c.procs[lagger].pid)
        leader_hwm = _hwm(c.procs[leader].pid)

        after = {i: c.status(i) for i in (leader, other, lagger)}
        lag_status = after[lagger]
        print(f"\nsnapshot catch-up: {count} keys, {DATA_MB} MiB: catch-up {catch_up:.2f} s; leader /metrics "
              f"{len(scraper.times)} scrapes, max {max(scraper.times, default=0) * 1000:.0f} ms, "
              f"failed {len(scraper.failures)}; follower VmHWM {hwm / MB:.0f} MiB; leader VmHWM "
              f"{leader_hwm / MB:.0f} MiB; terms {before[leader].term} -> {after[leader].term}")
        assert lag_status.snapshot_index > 0, "the follower replayed the log instead of installing a snapshot"
        assert "installed snapshot" in c.log_text(lagger)
        # The leader stayed responsive and in charge: every scrape answered, nobody was elected.
        assert scraper.times and not scraper.failures, scraper.failures
        for i in (leader, other):
            assert after[i].term == before[i].term, (i, before[i].term, after[i].term)
            assert after[i].leader_changes == before[i].leader_changes, i
            assert after[i].leader_id == leader
        assert lag_status.term == before[leader].term and lag_status.leader_id == leader
        # Memory bounded by the data (LMDB's dirty pages of the one install transaction), not a multiple.
        assert hwm < DATA_MB * MB * 3 // 2 + BASE_RSS, f"follower peak RSS {hwm / MB:.0f} MiB for {DATA_MB} MiB"

        with Client(c.address(lagger)) as cl:
            got = cl.range("snap/", prefix=True, count_only=True, consistency="serializable",
                           endpoint=c.address(lagger))
            assert got.count == count
        wait_for("the follower to apply the leader's last entry",
                 lambda: c.status(lagger).applied >= c.status(leader).applied)
    finally:
        c.stop_all()
    # Byte for byte: every record of the leader's kv, and nothing else.
    assert _records(tmp_path / f"node{lagger}") == _records(tmp_path / f"node{leader}")
