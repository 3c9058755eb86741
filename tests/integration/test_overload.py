"""Admission control on real nodes: each watermark refuses new requests once reached (RESOURCE_EXHAUSTED,
ErrorInfo OVERLOADED naming the resource, `grpc-retry-pushback-ms`), and accepts again once drained; reads
keep their own budget; the pressure level travels in every reply, Status, /metrics and the log.

The nodes run with tiny watermarks so a short burst reaches them. Raw gRPC stubs are used, so what the
server answers is seen as it is (the Python client would retry OVERLOADED)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from raftkv.proto.stubs import kv_pb2 as pb
from raftkv.proto.stubs import kv_pb2_grpc

from .local_cluster import LocalCluster
from .observe import events_named, sample, scrape

LIMITS = ["--overload-max-proposals", "4", "--overload-max-proposal-bytes", str(256 << 10),
          "--overload-max-follower-queue-bytes", str(1 << 20),
          "--overload-max-ack-waiters", "1", "--overload-max-read-waiters", "4", "--overload-pushback-ms", "50"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("overload"), extra=LIMITS).start_all()
    try:
        yield c
    finally:
        c.stop_all()


def overloaded(e: grpc.aio.AioRpcError) -> dict[str, str] | None:
    """The ErrorInfo metadata of an OVERLOADED refusal (None for any other error)."""
    if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    st = rpc_status.from_call(e)
    assert st is not None
    for d in st.details:
        info = error_details_pb2.ErrorInfo()
        if d.Unpack(info) and info.reason == "OVERLOADED":
            return dict(info.metadata)
    return None


def trailing(err: grpc.aio.AioRpcError) -> dict[str, str]:
    return {k: v for k, v in (err.trailing_metadata() or ()) if isinstance(v, str)}


async def burst(address: str, n: int, make: Any, timeout: float = 20) -> list[Any]:
    """`n` calls at once on one channel; each outcome is the reply's trailing metadata or the error."""
    async with grpc.aio.insecure_channel(address) as ch:
        stub = kv_pb2_grpc.KVStub(ch)

        async def one(i: int) -> Any:
            method, req = make(stub, i)
            call = method(req, timeout=timeout)
            try:
                await call
                return {k: v for k, v in (await call.trailing_metadata() or ()) if isinstance(v, str)}
            except grpc.aio.AioRpcError as e:
                return e

        return await asyncio.gather(*(one(i) for i in range(n)))


def put(key: str, size: int = 16) -> Any:
    return lambda stub, i: (stub.Put, pb.PutRequest(key=f"{key}{i}".encode(), value=b"v" * size))


def refused_resources(outcomes: list[Any]) -> set[str]:
    out = set()
    for o in outcomes:
        if isinstance(o, grpc.aio.AioRpcError):
            meta = overloaded(o)
            assert meta is not None, f"unexpected error {o.code()} {o.details()}"
            assert int(trailing(o)["grpc-retry-pushback-ms"]) >= 50
            assert trailing(o)["raftkv-pressure"] == "RED"
            out.add(meta["resource"])
    return out


def leader_address(c: LocalCluster) -> str:
    return c.address(c.wait_leader())


def one_put_succeeds(address: str, key: str) -> dict[str, str]:
    return asyncio.run(burst(address, 1, put(key)))[0]


def test_writes_in_flight_refused_over_the_high_mark_then_accepted(cluster: LocalCluster) -> None:
    addr = leader_address(cluster)
    outcomes = asyncio.run(burst(addr, 100, put("count")))
    assert refused_resources(outcomes) == {"proposals"}
    assert sum(isinstance(o, dict) for o in outcomes) >= 4  # the first ones were admitted and applied
    after = one_put_succeeds(addr, "count-after")
    assert isinstance(after, dict) and after["raftkv-pressure"] in ("GREEN", "YELLOW")
    with grpc.insecure_channel(addr) as ch:  # the level is in the reply's meta too
        reply = kv_pb2_grpc.KVStub(ch).Put(pb.PutRequest(key=b"meta", value=b"v"), timeout=10)
        assert reply.meta.pressure in ("GREEN", "YELLOW")
        assert kv_pb2_grpc.KVStub(ch).Get(pb.GetRequest(key=b"meta"), timeout=10).meta.pressure in ("GREEN", "YELLOW")


def test_bytes_in_flight_refused_over_the_high_mark_then_accepted(cluster: LocalCluster) -> None:
    addr = leader_address(cluster)
    outcomes = asyncio.run(burst(addr, 40, put("bytes", 100 << 10)))  # 3 in flight hold 300 KiB > 256 KiB
    assert refused_resources(outcomes) == {"proposal_bytes"}
    assert isinstance(one_put_succeeds(addr, "bytes-after"), dict)


def test_reads_waiting_refused_over_their_own_budget(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    addr = cluster.address(leader)
    followers = [i for i in sorted(cluster.ports) if i != leader]

    def get(stub: Any, i: int) -> Any:
        return stub.Get, pb.GetRequest(key=b"count0")

    for i in followers:  # no quorum round can finish: linearizable reads wait on the leader
        cluster.signal(i, signal.SIGSTOP)
    try:
        outcomes = asyncio.run(burst(addr, 40, get, timeout=1.0))
    finally:
        for i in followers:
            cluster.signal(i, signal.SIGCONT)
    waited = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError) and overloaded(o) is None]
    assert len(waited) <= 4  # the admitted ones: answered, or failed once leadership or time ran out
    assert refused_resources([o for o in outcomes if o not in waited]) == {"read_waiters"}
    addr = leader_address(cluster)
    assert isinstance(asyncio.run(burst(addr, 1, get))[0], dict)


def test_ack_waiters_refuse_writes_but_not_reads_and_drain(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    addr = cluster.address(leader)
    paused = next(i for i in sorted(cluster.ports) if i != leader)
    cluster.signal(paused, signal.SIGSTOP)  # a sync write now waits for it, up to its timeout
    try:
        async def scenario() -> tuple[Any, Any, Any, Any]:
            async with grpc.aio.insecure_channel(addr) as ch:
                stub = kv_pb2_grpc.KVStub(ch)
                sync = stub.Put(pb.PutRequest(key=b"sync", value=b"1",
                                              write=pb.WriteOptions(ack=pb.ACK_SYNC, timeout_ms=2500)), timeout=20)
                sync_task = asyncio.ensure_future(sync)
                for _ in range(400):  # until the leader counts it waiting
                    st = await kv_pb2_grpc.AdminStub(ch).Status(pb.StatusRequest(), timeout=5)
                    if {r.resource: r.usage for r in st.overload}["ack_waiters"] >= 1:
                        break
                    await asyncio.sleep(0.01)
                refused: Any = None
                try:
                    await stub.Put(pb.PutRequest(key=b"k", value=b"v"), timeout=5)
                except grpc.aio.AioRpcError as e:
                    refused = e
                read = stub.Get(pb.GetRequest(key=b"sync"), timeout=5)  # linearizable: the read budget
                got = await read
                try:
                    await sync_task
                    sync_err: Any = None
                except grpc.aio.AioRpcError as e:
                    sync_err = e
                read_meta = {k: v for k, v in (await read.trailing_metadata() or ()) if isinstance(v, str)}
                return refused, got, read_meta, sync_err

        refused, got, read_meta, sync_err = asyncio.run(scenario())
        assert refused is not None and overloaded(refused) is not None
        assert overloaded(refused)["resource"] == "ack_waiters"
        assert got.found and read_meta["raftkv-pressure"] == "RED"
        assert sync_err is not None and sync_err.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # SYNC_TIMEOUT
        assert isinstance(one_put_succeeds(addr, "ack-after"), dict)  # drained: accepted again
    finally:
        cluster.signal(paused, signal.SIGCONT)


def test_a_stopped_follower_holds_bounded_leader_memory_and_catches_up(cluster: LocalCluster) -> None:
    """Its queue on the leader stops at the bound (appends beyond are dropped and the follower is probed),
    writes go on with the other follower (the queue a commit needs stays empty), and once resumed the
    follower catches up from the log."""
    from raftkv.client import Client

    leader = cluster.wait_leader()
    stopped = next(i for i in sorted(cluster.ports) if i != leader)
    dropped_before = sample(scrape(cluster, leader), "raftkv_peer_messages_dropped_total")
    cluster.signal(stopped, signal.SIGSTOP)
    try:
        with Client(cluster.address(leader), timeout=20) as c:
            for i in range(150):  # ~9.6 MiB of entries: more than the HTTP/2 windows and the queue hold
                last = c.put(f"stopped{i}", b"x" * (64 << 10))
        metrics = scrape(cluster, leader)
        # (The queue may be empty at this instant: a stream the stopped peer's keep-alive broke is cleared.)
        assert sample(metrics, "raftkv_peer_queue_bytes", peer=str(stopped)) <= 1 << 20
        assert sample(metrics, "raftkv_peer_messages_dropped_total") > dropped_before  # the bound was reached
        assert sample(metrics, "raftkv_overload_usage", resource="follower_queue_bytes") < 1 << 20
    finally:
        cluster.signal(stopped, signal.SIGCONT)
    cluster.wait_applied(stopped, last.meta.index, timeout=60)


def test_pressure_in_status_metrics_kv_status_and_log(cluster: LocalCluster, tmp_path: Path) -> None:
    leader = cluster.wait_leader()
    assert refused_resources(asyncio.run(burst(cluster.address(leader), 60, put("metrics")))) == {"proposals"}
    st = cluster.status(leader)
    assert st.pressure in ("GREEN", "YELLOW", "RED")
    names = {r.resource: r for r in st.overload}
    assert set(names) >= {"proposals", "proposal_bytes", "unapplied", "follower_queue_bytes", "ack_waiters",
                          "read_waiters"}
    assert names["proposals"].high_watermark == 4 and names["read_waiters"].budget == "read"
    metrics = scrape(cluster, leader)
    assert sample(metrics, "raftkv_pressure_level") in (0, 1, 2)
    assert sample(metrics, "raftkv_overload_high_watermark", resource="ack_waiters") == 1
    refused = sum(sample(scrape(cluster, i), "raftkv_overload_refused_total", resource="proposals")
                  for i in sorted(cluster.ports))
    assert refused >= 1
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{cluster.metrics_ports[leader]}/metrics", timeout=5) as r:
        text = r.read()
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    # One log event per transition: consecutive events never repeat a level.
    reds = 0
    for i in sorted(cluster.ports):
        events = events_named(cluster, i, "pressure level changed")
        for a, b in zip(events, events[1:], strict=False):
            assert a["pressure"] != b["pressure"] and b["previous"] == a["pressure"]
        reds += sum(e["pressure"] == "RED" for e in events)
    assert reds >= 1
    kv = [sys.executable, "-m", "raftkv.cli.kv", "--endpoints", cluster.endpoints]
    out = subprocess.run([*kv, "-w", "json", "status"], capture_output=True, timeout=30, text=True)
    assert out.returncode == 0, out.stderr
    assert all(row["pressure"] in ("GREEN", "YELLOW", "RED") for row in json.loads(out.stdout))
    out = subprocess.run([*kv, "-w", "table", "status"], capture_output=True, timeout=30, text=True)
    assert "PRESSURE" in out.stdout.upper() and ("GREEN" in out.stdout or "YELLOW" in out.stdout or "RED" in out.stdout)


def test_client_retries_overloaded_within_its_retry_budget(cluster: LocalCluster) -> None:
    """The Python client retries OVERLOADED (nothing was applied) after the server's pushback, but no more
    than its retry budget allows: what is left over reaches the caller as OverloadedError."""
    from raftkv.client import AsyncClient, OverloadedError, RetrySettings

    async def run() -> tuple[list[Any], dict[str, Any]]:
        settings = RetrySettings(ratio=0.1, reserve_per_s=1.0, cap=10.0)
        async with AsyncClient(cluster.endpoints, timeout=20, retry=settings) as c:
            outs = await asyncio.gather(*(c.put(f"budget{i}", "v") for i in range(100)), return_exceptions=True)
            return list(outs), c.metrics()

    outs, m = asyncio.run(run())
    failed = [o for o in outs if isinstance(o, BaseException)]
    assert all(isinstance(o, OverloadedError) and o.resource == "proposals" for o in failed), failed[:3]
    assert "retry budget is spent" in str(failed[0]) if failed else True
    assert m["requests"] == 100 and m["retries"] >= 1
    assert m["retries"] <= 10 + 0.1 * 100 + 1.0 * 30  # cap + share of requests + reserve over the run
    assert m["retries_refused"] == len(failed)
    assert len(outs) - len(failed) >= 4
