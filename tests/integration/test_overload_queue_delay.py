"""The queue-delay watermark on real nodes: once the writes in flight would take longer than
`--overload-max-queue-delay-ms` to drain at the rate the node answers them, new writes are refused
(RESOURCE_EXHAUSTED, OVERLOADED naming `queue_delay_ms`, `grpc-retry-pushback-ms`), and accepted again once
drained; a lone write, or a few at once, is never refused however tight the mark.

The nodes run with a 2 ms mark (any 16 writes in flight on this machine take longer than that to drain) and
the count and byte marks at their defaults, so the delay mark is the one a burst reaches.

The mark sees only writes the node has admitted, not calls still queued in gRPC before any handler runs:
on a fast, idle machine small writes commit about as fast as the event loop takes them in, and fewer than
16 may ever be in flight at once (then nothing is refused, rightly: the node's own queue is short). The
overload bursts therefore carry 4 KiB values, whose replication and log writes make each round slower than
the intake, so the writes queue in the node itself."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest

from .local_cluster import LocalCluster
from .observe import sample, scrape
from .test_overload import burst, one_put_succeeds, overloaded, put, refused_resources

DELAY_MS = 2
BURST_VALUE = 4096
BURST_TIMEOUT = 60
"""Seconds a burst's writes may take: admitted ones are answered, however starved the machine (a deadline
would be an error that is no refusal)."""

# One worker runs this module's tests in file order: the lone-write test relies on the measurement the
# first test's overload leaves behind (xdist's load scheduling may otherwise split a module).
pytestmark = pytest.mark.xdist_group("queue-delay")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # A 2 s election timeout: on a machine busy with other work, 600 writes of 4 KiB at once can keep the
    # leader's loop from ticking for the default 0.5 s, and an election in a wave answers writes
    # UNAVAILABLE, which is no refusal; elections are not what this module is about.
    c = LocalCluster(tmp_path_factory.mktemp("queue-delay"),
                     extra=["--overload-max-queue-delay-ms", str(DELAY_MS), "--overload-pushback-ms", "50",
                            "--election-ticks", "40"]).start_all()
    try:
        yield c
    finally:
        c.stop_all()


def test_writes_refused_once_they_would_wait_too_long_then_accepted(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    addr = cluster.address(leader)
    refused: set[str] = set()
    for wave in range(8):  # bounded; a wave lasts long enough for the answer rate to be measured in it
        outcomes = asyncio.run(burst(addr, 600, put(f"delay{wave}-", size=BURST_VALUE), timeout=BURST_TIMEOUT))
        refused = refused_resources(outcomes)  # every refusal OVERLOADED, with pushback and RED
        if refused:
            assert sum(isinstance(o, dict) for o in outcomes) >= 1  # some of the wave was admitted and applied
            break
    assert refused == {"queue_delay_ms"}
    err = next(o for o in outcomes if isinstance(o, grpc.aio.AioRpcError))
    meta = overloaded(err)
    assert meta is not None and int(meta["high_watermark"]) == DELAY_MS and int(meta["usage"]) >= DELAY_MS
    assert isinstance(one_put_succeeds(addr, "delay-after"), dict)  # drained: accepted again
    metrics = scrape(cluster, leader)
    assert sample(metrics, "raftkv_overload_high_watermark", resource="queue_delay_ms") == DELAY_MS
    assert sample(metrics, "raftkv_overload_refused_total", resource="queue_delay_ms") >= 1
    st = cluster.status(leader)
    assert {r.resource for r in st.overload} >= {"queue_delay_ms", "proposals"}


def test_a_lone_write_or_a_few_at_once_are_never_refused(cluster: LocalCluster) -> None:
    """Runs after the overload above, so the node has measured its answer rate under load: the 2 ms mark
    is far below what 16 writes take here, yet fewer in flight than that are always admitted."""
    addr = cluster.address(cluster.wait_leader())
    for i in range(20):
        assert isinstance(one_put_succeeds(addr, f"lone{i}-"), dict)
    for wave in range(5):
        outcomes = asyncio.run(burst(addr, 8, put(f"few{wave}-")))
        assert all(isinstance(o, dict) for o in outcomes), [o for o in outcomes if not isinstance(o, dict)]


def test_a_batch_of_writes_is_refused_whole_and_none_of_it_applied(cluster: LocalCluster) -> None:
    """While the leader refuses writes, a KV.Batch of writes gets the one OVERLOADED error for each of its
    operations (refused before any is validated or proposed), and none of them is applied.

    Each wave sends 300 unary puts along with the batches: they keep the leader busy long enough for its
    answer rate to be measured in the wave itself, whatever ran before on this cluster and however fast
    the machine drains a wave of batches alone."""
    from raftkv.proto.stubs import kv_pb2 as pb
    from raftkv.proto.stubs import kv_pb2_grpc

    addr = cluster.address(cluster.wait_leader())

    async def wave(w: int) -> list[tuple[int, pb.BatchResponse]]:
        async with grpc.aio.insecure_channel(addr) as ch:
            stub = kv_pb2_grpc.KVStub(ch)

            async def batch(b: int) -> tuple[int, pb.BatchResponse]:
                ops = [pb.BatchOp(put=pb.PutRequest(key=f"wb{w}-{b}-{j}".encode(), value=b"v")) for j in range(20)]
                return b, await stub.Batch(pb.BatchRequest(ops=ops), timeout=BURST_TIMEOUT)

            async def unary(i: int) -> None:
                try:
                    await stub.Put(pb.PutRequest(key=f"wu{w}-{i}".encode(), value=b"v" * BURST_VALUE),
                                   timeout=BURST_TIMEOUT)
                except grpc.aio.AioRpcError as e:
                    assert overloaded(e) is not None, f"unexpected error {e.code()} {e.details()}"

            load = [asyncio.ensure_future(unary(i)) for i in range(300)]
            await asyncio.sleep(0.05)  # the unary wave is in flight: the node is busy when the batches arrive
            replies = list(await asyncio.gather(*(batch(b) for b in range(60))))
            await asyncio.gather(*load)
            return replies

    refused: list[tuple[int, int]] = []
    for w in range(4):  # bounded: until a wave holds a refused batch
        for b, reply in asyncio.run(wave(w)):
            errors = [r.error for r in reply.results if r.HasField("error")]
            if errors:
                assert len(errors) == len(reply.results) == 20  # refused whole
                assert {(e.reason, e.metadata["resource"]) for e in errors} == {("OVERLOADED", "queue_delay_ms")}
                assert all(e.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] for e in errors)
                refused.append((w, b))
        if refused:
            break
    assert refused, "no batch was refused"
    with grpc.insecure_channel(addr) as ch:
        kv = kv_pb2_grpc.KVStub(ch)
        for w, b in refused[:5]:
            for j in (0, 19):
                assert not kv.Get(pb.GetRequest(key=f"wb{w}-{b}-{j}".encode()), timeout=10).found
