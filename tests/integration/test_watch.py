"""Watch on real `raftkv serve` processes: events in revision order, once, with previous values; catch-up
from history; many watches on one stream; progress notifications; compaction (OUT_OF_RANGE naming the
oldest revision); bad watches refused with precise statuses; resume on another node after kill -9."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from raftkv.client import Client, RaftKVError
from raftkv.client.watch import WatchCanceledError
from raftkv.proto.stubs import watch_pb2 as wpb
from raftkv.proto.stubs import watch_pb2_grpc

from .local_cluster import LocalCluster
from .observe import sample, scrape


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(Path(tmp_path_factory.mktemp("watch")), extra=["--max-watches-per-stream", "4", "--watch-buffer-events", "50"]).start_all()
    try:
        yield c
    finally:
        c.stop_all()


def pump(it: Iterator[wpb.WatchResponse], q: queue.Queue) -> None:
    """Put what the watch yields into `q`, until it ends (its client closed, the cluster stopped)."""
    try:
        for r in it:
            q.put(r)
    except RaftKVError:
        pass


def revisions_seen(got: queue.Queue[wpb.WatchResponse], count: int, timeout: float = 30) -> tuple[list[int], set[int]]:
    """The mod revisions of the events a pumped watch delivered, until `count` arrived (or `timeout` s), and
    the nodes that served them."""
    seen: list[int] = []
    served_by: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < count and time.monotonic() < deadline:
        try:
            r = got.get(timeout=0.2)
        except queue.Empty:
            continue
        served_by.add(r.served_by)
        seen += [e.kv.mod_revision for e in r.events]
    return seen, served_by


def collect(it: Iterator[wpb.WatchResponse], want: int, timeout: float = 20.0) -> list[wpb.Event]:
    """Events from `it` (read on a thread) until `want` of them came, or the timeout."""
    out: queue.Queue[wpb.Event] = queue.Queue()

    def run() -> None:
        try:
            for r in it:
                for e in r.events:
                    out.put(e)
        except RaftKVError:
            pass

    threading.Thread(target=run, daemon=True).start()
    events: list[wpb.Event] = []
    deadline = time.monotonic() + timeout
    while len(events) < want and time.monotonic() < deadline:
        try:
            events.append(out.get(timeout=0.2))
        except queue.Empty:
            pass
    return events


def test_events_after_a_revision_in_order_with_previous_values(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        r0 = c.put("w1/a", "0").meta.index
        c.put("w1/a", "1")
        c.put("w1/b", "1")
        c.delete("w1/a")
        c.put("other", "x")  # not in the prefix
        c.put("w1/c", "1")
        evs = collect(c.watch("w1/", prefix=True, after_revision=r0, prev_kv=True), 4)
        assert [(e.type, e.kv.key, e.kv.value) for e in evs] == [
            (wpb.Event.PUT, b"w1/a", b"1"), (wpb.Event.PUT, b"w1/b", b"1"), (wpb.Event.DELETE, b"w1/a", b""),
            (wpb.Event.PUT, b"w1/c", b"1")]
        assert evs[0].prev_kv.value == b"0" and evs[2].prev_kv.value == b"1"
        revs = [e.kv.mod_revision for e in evs]
        assert revs == sorted(revs) and revs[0] > r0


def test_live_events_on_a_follower(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    follower = next(i for i in cluster.procs if i != leader)
    with Client(cluster.address(follower), timeout=10) as fc, cluster.client() as c:
        it = fc.watch("w2", after_revision=0)
        got: queue.Queue[wpb.WatchResponse] = queue.Queue()
        threading.Thread(target=pump, args=(it, got), daemon=True).start()
        time.sleep(0.5)  # the watch is created "from now"
        revs = [c.put("w2", str(i)).meta.index for i in range(5)]
        seen: list[int] = []
        deadline = time.monotonic() + 20
        while len(seen) < 5 and time.monotonic() < deadline:
            try:
                r = got.get(timeout=0.2)
            except queue.Empty:
                continue
            assert r.served_by == follower
            seen += [e.kv.mod_revision for e in r.events]
        assert seen == revs


def test_closing_the_client_ends_its_watch_in_another_thread(cluster: LocalCluster) -> None:
    """A watch iterated on one thread ends when another thread closes its client, and the closed client
    makes no new connections: it must not reconnect and watch on for ever."""
    fc = Client(cluster.endpoints, timeout=10)
    got: queue.Queue[wpb.WatchResponse] = queue.Queue()
    pumping = threading.Thread(target=pump, args=(fc.watch("w-closed", progress_interval_ms=200), got), daemon=True)
    pumping.start()
    assert got.get(timeout=10).progress_notify  # the watch is up
    fc.close()
    pumping.join(timeout=10)
    assert not pumping.is_alive(), "the watch outlived its client"
    with pytest.raises(ValueError, match="closed"):
        fc.get("w-closed")


def test_closing_the_async_client_ends_its_watch(cluster: LocalCluster) -> None:
    import asyncio

    from raftkv.client import AsyncClient

    async def go() -> None:
        ac = AsyncClient(cluster.endpoints, timeout=10)
        up = asyncio.Event()

        async def pump_async() -> None:
            async for r in ac.watch("w-aclosed", progress_interval_ms=200):
                if r.progress_notify:
                    up.set()

        task = asyncio.create_task(pump_async())
        await asyncio.wait_for(up.wait(), 10)
        await ac.close()
        await asyncio.wait_for(task, 10)  # TimeoutError: the watch outlived its client
        with pytest.raises(ValueError, match="closed"):
            await ac.get("w-aclosed")

    asyncio.run(go())


def _stream(cluster: LocalCluster, reqs: list[wpb.WatchRequest]) -> tuple[queue.Queue, Iterator[wpb.WatchResponse]]:
    q: queue.Queue[wpb.WatchRequest | None] = queue.Queue()
    for r in reqs:
        q.put(r)

    def feed() -> Iterator[wpb.WatchRequest]:
        while (item := q.get()) is not None:
            yield item

    ch = grpc.insecure_channel(cluster.address(1))
    return q, watch_pb2_grpc.WatchStub(ch).Watch(feed(), timeout=30)


def create(wid: int, key: bytes, **kw: object) -> wpb.WatchRequest:
    return wpb.WatchRequest(create=wpb.WatchCreateRequest(watch_id=wid, key=key, **kw))


def test_many_watches_on_one_stream_bad_ones_refused_and_progress(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        now = c.put("w3/seed", "x").meta.index
        q, stream = _stream(cluster, [
            create(1, b"w3/a", after_revision=now),
            create(2, b"w3/b", after_revision=now, progress_interval_ms=200),
            create(3, b"w3/z", range_end=b"w3/a"),  # empty range: refused alone
            create(2, b"w3/c"),                        # id in use
        ])
        replies = [next(stream) for _ in range(4)]
        created = {r.watch_id for r in replies if r.created}
        refused = {r.watch_id: r for r in replies if r.canceled}
        assert created == {1, 2}
        assert refused[3].cancel_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "empty" in refused[3].cancel_reason
        ra = c.put("w3/a", "1").meta.index
        rb = c.put("w3/b", "1").meta.index
        by_watch: dict[int, list[int]] = {1: [], 2: []}
        progress = []
        deadline = time.monotonic() + 20
        while (not by_watch[1] or not by_watch[2] or not progress) and time.monotonic() < deadline:
            r = next(stream)
            if r.progress_notify:
                progress.append(r)
            by_watch[r.watch_id] += [e.kv.mod_revision for e in r.events]
        assert by_watch == {1: [ra], 2: [rb]}
        assert progress and progress[-1].watch_id == 2 and progress[-1].revision >= rb
        # Too many watches on this stream (--max-watches-per-stream 4): refused with RESOURCE_EXHAUSTED.
        for wid in (10, 11, 12):
            q.put(create(wid, b"w3/x%d" % wid))
        replies = [next(stream) for _ in range(3)]
        refusal = [r for r in replies if r.canceled]
        assert len(refusal) == 1 and refusal[0].cancel_code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert "--max-watches-per-stream" in refusal[0].cancel_reason
        q.put(wpb.WatchRequest(cancel=wpb.WatchCancelRequest(watch_id=1)))
        r = next(stream)
        while not r.canceled:
            r = next(stream)
        assert r.watch_id == 1
        q.put(None)
        stream.cancel()


def test_compacted_revision_is_out_of_range_naming_the_oldest(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        first = c.put("w4", "0").meta.index
        for i in range(3):
            c.put("w4", str(i + 1))
        stub = watch_pb2_grpc.WatchStub(c._channel(cluster.address(cluster.wait_leader())))
        out = stub.Compact(wpb.CompactRequest(revision=first + 2), timeout=10)
        assert out.oldest_revision == first + 2
        # Every member compacts its history when it applies the compaction, a few ms apart (a follower
        # learns of a commit with the next append, or a commit-notice delay later): wait for all of them,
        # since the watch may go to any.
        after = c.put("w4-after-compact", "x").meta.index
        for i in cluster.procs:
            cluster.wait_applied(i, after)
        with pytest.raises(WatchCanceledError) as e:
            next(iter(c.watch("w4", after_revision=first)))
        assert e.value.code == grpc.StatusCode.OUT_OF_RANGE and e.value.compact_revision == first + 2
        assert str(first + 2) in str(e.value)
        evs = collect(c.watch("w4", after_revision=first + 1), 2)  # from the oldest revision on: served
        assert [e.kv.value for e in evs] == [b"2", b"3"]
        with pytest.raises(grpc.RpcError) as f:
            stub.Compact(wpb.CompactRequest(revision=10**12), timeout=10)
        assert f.value.code() == grpc.StatusCode.OUT_OF_RANGE


def test_async_client_watch(cluster: LocalCluster) -> None:
    import asyncio

    from raftkv.client import AsyncClient

    async def go() -> list[int]:
        async with AsyncClient(cluster.endpoints, timeout=10) as ac:
            with cluster.client() as c:
                start = c.put("w6", "0").meta.index
                revs = [c.put("w6", str(i)).meta.index for i in range(3)]
            got: list[int] = []
            agen = ac.watch("w6", after_revision=start)
            async for r in agen:
                got += [e.kv.mod_revision for e in r.events]
                if len(got) >= 3:
                    break
            await agen.aclose()
            assert got == revs
            return got

    assert len(asyncio.run(asyncio.wait_for(go(), 30))) == 3


def test_slow_watcher_is_cut_off_with_resource_exhausted(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        start = c.put("slow/seed", "x").meta.index
        q: queue.Queue[wpb.WatchRequest | None] = queue.Queue()
        q.put(wpb.WatchRequest(create=wpb.WatchCreateRequest(key=b"slow/", range_end=b"slow0",
                                                              after_revision=start)))

        def feed() -> Iterator[wpb.WatchRequest]:
            while (item := q.get()) is not None:
                yield item

        # No BDP probing: the client's receive window stays small, so the server's sends back up.
        ch = grpc.insecure_channel(cluster.address(1), options=[("grpc.http2.bdp_probe", 0)])
        stream = watch_pb2_grpc.WatchStub(ch).Watch(feed(), timeout=60)
        assert next(stream).created
        before = scrape(cluster, 1)
        big = "v" * 30_000
        for i in range(70):  # ~2 MB: more than the stream's flow-control windows, > 50 events queued
            c.put(f"slow/k{i}", big)
        with pytest.raises(grpc.RpcError) as e:
            for _ in stream:
                pass
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "fell more than 50 events behind" in e.value.details()
        after = scrape(cluster, 1)
        assert sample(after, "raftkv_watch_slow_cancels_total") == sample(before, "raftkv_watch_slow_cancels_total") + 1
        assert sample(after, "raftkv_watch_events_sent_total") > sample(before, "raftkv_watch_events_sent_total")
        q.put(None)
        ch.close()


def test_watch_moves_off_a_paused_node(cluster: LocalCluster) -> None:
    """A node paused (SIGSTOP) while serving a watch sends nothing, not even progress: the client gives the
    stream up after three silent progress intervals and resumes on another node, losing nothing."""
    import signal

    leader = cluster.wait_leader()
    paused = next(i for i in sorted(cluster.procs) if i != leader)
    order = [cluster.address(paused)] + [cluster.address(i) for i in sorted(cluster.procs) if i != paused]
    with Client(",".join(order), timeout=10) as wc, Client(cluster.address(leader), timeout=10) as c:
        start = c.put("w7", "start").meta.index
        got: queue.Queue[wpb.WatchResponse] = queue.Queue()
        it = wc.watch("w7", after_revision=start, progress_interval_ms=300)
        threading.Thread(target=pump, args=(it, got), daemon=True).start()
        written = [c.put("w7", "0").meta.index]
        first = got.get(timeout=20)
        assert first.served_by == paused and [e.kv.mod_revision for e in first.events] == written
        cluster.signal(paused, signal.SIGSTOP)
        try:
            written += [c.put("w7", str(i)).meta.index for i in range(1, 6)]
            seen, servers = revisions_seen(got, 5)
            assert seen == written[1:] and paused not in servers
        finally:
            cluster.signal(paused, signal.SIGCONT)


def test_watch_resumes_on_another_node_without_loss_or_repeat(cluster: LocalCluster) -> None:
    """Last: kills a node. The watch is served by node 3 (listed first), which dies mid-stream."""
    order = [cluster.address(3), cluster.address(1), cluster.address(2)]
    with Client(",".join(order), timeout=10) as wc, cluster.client() as c:
        start = c.put("w5/start", "x").meta.index
        got: queue.Queue[wpb.WatchResponse] = queue.Queue()
        it = wc.watch("w5/k", prefix=True, after_revision=start, progress_interval_ms=300)
        threading.Thread(target=pump, args=(it, got), daemon=True).start()
        written: list[int] = []
        for i in range(40):
            if i == 20:
                cluster.kill(3)
            for _ in range(50):
                try:
                    written.append(c.put(f"w5/k{i % 7}", str(i)).meta.index)
                    break
                except Exception:  # noqa: BLE001 - a failover: try again
                    time.sleep(0.1)
        seen, served_by = revisions_seen(got, len(written))
        assert seen == written  # every acknowledged write once, in order
        assert 3 in served_by and len(served_by) >= 2

