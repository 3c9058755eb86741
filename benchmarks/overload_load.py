"""The load of `python -m benchmarks overload`: one write call per system and client path, a closed loop
that finds the peak, an open loop that offers a rate whatever the answers, and the recovery probe.

Raw gRPC stubs, no client retries: what the server answers is measured as it is. A call's outcome is OK,
REFUSED (raftkv: RESOURCE_EXHAUSTED / OVERLOADED; etcd: RESOURCE_EXHAUSTED "too many requests", which it
sends only past its own apply backlog) or OTHER (a deadline, an unavailable node). A batch call carries
`batch` puts (raftkv KV.Batch; etcd a Txn of puts) and counts as `batch` operations."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .procstat import sample

OK, REFUSED, OTHER = 0, 1, 2
PREFIX = b"overload/"
KEYS = 4096
"""Keys written round-robin (bounds the stores' size at 64 KiB values; etcd keeps every revision)."""
OP_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Target:
    system: str  # raftkv | etcd
    client: str  # unary | batch
    value_size: int
    batch: int  # puts per batch call (1 for unary)


POOL_BYTES = 64 << 20
"""Requests are built once, before the load, and reused round-robin (at most this many value bytes): building
protobufs per call in Python would make the harness, not the server, the bottleneck at 8x."""


def make_call(target: Target, channel: Any) -> Callable[[int], Awaitable[int]]:
    """`call(i)`: send the i-th prebuilt write call once; its outcome OK, REFUSED or OTHER."""
    import grpc

    value = b"v" * target.value_size
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    calls = max(4, min(KEYS // target.batch, POOL_BYTES // max(1, target.batch * target.value_size)))

    def keys(n: int) -> list[bytes]:
        return [PREFIX + b"%d" % (n * target.batch + j) for j in range(target.batch)]

    if target.system == "etcd":
        from raftkv.proto.etcd_stubs import rpc_pb2 as epb
        from raftkv.proto.etcd_stubs import rpc_pb2_grpc

        estub = rpc_pb2_grpc.KVStub(channel)
        if target.client == "unary":
            method: Any = estub.Put
            pool: list[Any] = [epb.PutRequest(key=keys(n)[0], value=value) for n in range(calls)]
        else:
            method = estub.Txn
            pool = [epb.TxnRequest(success=[epb.RequestOp(request_put=epb.PutRequest(key=k, value=value))
                                            for k in keys(n)]) for n in range(calls)]
        batch_reply = False
    else:
        from raftkv.proto.stubs import kv_pb2 as pb
        from raftkv.proto.stubs import kv_pb2_grpc

        stub = kv_pb2_grpc.KVStub(channel)
        if target.client == "unary":
            method = stub.Put
            pool = [pb.PutRequest(key=keys(n)[0], value=value) for n in range(calls)]
        else:
            method = stub.Batch
            pool = [pb.BatchRequest(ops=[pb.BatchOp(put=pb.PutRequest(key=k, value=value)) for k in keys(n)])
                    for n in range(calls)]
        batch_reply = target.client == "batch"

    async def call(i: int) -> int:
        try:
            reply = await method(pool[i % calls], timeout=OP_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            return REFUSED if e.code() == exhausted else OTHER
        if batch_reply:  # a refused batch is refused whole (admission counts all its writes at once)
            first = reply.results[0]
            if first.HasField("error"):
                return REFUSED if first.error.reason == "OVERLOADED" else OTHER
        return OK

    return call


def channel(address: str) -> Any:
    import grpc

    return grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20),
                                                       ("grpc.max_receive_message_length", 64 << 20)])


def p99(lat: list[float]) -> float | None:
    if not lat:
        return None
    lat = sorted(lat)
    return round(lat[max(0, int(len(lat) * 0.99) - 1)] * 1000, 1)


async def closed_loop(target: Target, address: str, concurrency: int, seconds: float) -> dict[str, Any]:
    """`concurrency` calls outstanding at all times for `seconds`: operations answered OK per second and
    the p99 of their calls."""
    lat: list[float] = []
    stop = time.monotonic() + seconds
    async with channel(address) as ch:
        call = make_call(target, ch)

        async def writer(w: int) -> None:
            n = w * 7919
            while time.monotonic() < stop:
                t0 = time.monotonic()
                if await call(n) == OK:
                    lat.append(time.monotonic() - t0)
                n += 1

        await asyncio.gather(*(writer(w) for w in range(concurrency)))
    return {"concurrency": concurrency, "ops_s": round(len(lat) * target.batch / seconds), "p99_ms": p99(lat)}


class RssSampler:
    """The leader's RSS every 0.2 s, as (seconds since `t0`, bytes), sampled from the load's own loop."""

    def __init__(self, pid: int, t0: float) -> None:
        self.pid, self.t0, self.next = pid, t0, t0
        self.series: list[tuple[float, int]] = []

    def poll(self, now: float) -> None:
        if now >= self.next:
            s = sample(self.pid)
            if s is not None:
                self.series.append((round(now - self.t0, 2), s.rss_bytes))
            self.next = now + 0.2


async def open_loop(target: Target, address: str, ops_rate: float, seconds: float, max_in_flight: int,
                    rss: RssSampler, probe_ok_ms: float) -> dict[str, Any]:
    """Offer `ops_rate` operations per second for `seconds`, each call sent on schedule whether or not
    earlier ones were answered (at most `max_in_flight` calls outstanding in the harness: later ones count
    as not offered). Then the recovery: seconds from the end of the load until a lone probe write is
    answered OK within `probe_ok_ms` (the calls still outstanding keep running meanwhile)."""
    lat: list[float] = []
    counts = [0, 0, 0]
    in_flight = 0
    tasks: set[asyncio.Task[None]] = set()
    rate = ops_rate / target.batch  # calls per second
    async with channel(address) as ch:
        call = make_call(target, ch)

        async def one(i: int) -> None:
            nonlocal in_flight
            t0 = time.monotonic()
            try:
                out = await call(i)
            finally:
                in_flight -= 1
            counts[out] += 1
            if out == OK:
                lat.append(time.monotonic() - t0)

        loop = asyncio.get_running_loop()
        cpu0 = time.process_time()
        leader0 = sample(rss.pid)
        start = time.monotonic()
        i = skipped = 0
        while (now := time.monotonic()) - start < seconds:
            due = int((now - start) * rate)
            while i < due:
                if in_flight >= max_in_flight:
                    skipped += 1
                else:
                    in_flight += 1
                    t = loop.create_task(one(i))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                i += 1
            rss.poll(now)
            await asyncio.sleep(0.002)
        ended = time.monotonic()
        harness_cpu = (time.process_time() - cpu0) / (ended - start)
        leader1 = sample(rss.pid)
        leader_cpu = (leader1.cpu_s - leader0.cpu_s) / (ended - start) if leader0 and leader1 else None
        ok_in_window = len(lat)
        recovery = await _recover(address, target, ended, probe_ok_ms, rss)
        if tasks:
            await asyncio.wait(tasks, timeout=OP_TIMEOUT_S + 5)
    calls = i - skipped
    b = target.batch
    return {"offered_ops_s": round(ops_rate), "sent_ops_s": round(calls * b / seconds),
            "not_offered_ops": skipped * b, "goodput_ops_s": round(ok_in_window * b / seconds),
            "refused_share": round(counts[REFUSED] / calls, 3) if calls else 0.0,
            "other_errors": counts[OTHER], "p99_ms": p99(lat), "recovery_s": recovery,
            "leader_cpu": round(leader_cpu, 2) if leader_cpu is not None else None, "harness_cpu": round(harness_cpu, 2)}


async def _recover(address: str, target: Target, ended: float, ok_ms: float, rss: RssSampler) -> float | None:
    """Seconds from `ended` until a lone unary write answers OK within `ok_ms` (None: not within 30 s)."""
    probe = Target(target.system, "unary", 16, 1)
    async with channel(address) as ch:
        call = make_call(probe, ch)
        n = 0
        while (now := time.monotonic()) - ended < 30:
            rss.poll(now)
            t0 = time.monotonic()
            out = await call(10_000_000 + n)
            n += 1
            if out == OK and (time.monotonic() - t0) * 1000 <= ok_ms:
                return round(time.monotonic() - ended, 2)
            await asyncio.sleep(0.02)
    return None


async def idle_latency_ms(target: Target, address: str, n: int = 20) -> float:
    """Median of `n` lone writes on the idle cluster (the recovery probe's yardstick)."""
    probe = Target(target.system, "unary", 16, 1)
    lat = []
    async with channel(address) as ch:
        call = make_call(probe, ch)
        for i in range(n):
            t0 = time.monotonic()
            await call(20_000_000 + i)
            lat.append(time.monotonic() - t0)
    return sorted(lat)[len(lat) // 2] * 1000
