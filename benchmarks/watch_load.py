"""The two sides of the watch fan-out benchmark: watcher processes (many watches multiplexed on one stream
per node) and the writer (puts at a fixed rate into the watched prefix). Both systems are driven through
their own Watch API with raw gRPC stubs, so neither gets a client library the other lacks.

Delay is measured on one clock: time.monotonic() is CLOCK_MONOTONIC, shared by every process of the
machine, so a watcher's receive time minus the writer's acknowledgement time of the same key is a delay."""

from __future__ import annotations

import asyncio
import hashlib
import resource
import time
from array import array
from multiprocessing.connection import Connection
from typing import Any

CREATE_TIMEOUT_S = 60.0


class _Watch:
    """What one watch received: per event the key's sequence number, the revision and the receive time."""

    __slots__ = ("seqs", "times", "last_rev", "disorder", "canceled")

    def __init__(self) -> None:
        self.seqs = array("q")
        self.times = array("d")
        self.last_rev = 0
        self.disorder = 0  # events whose revision was not above the previous one (repeats or reordering)
        self.canceled = ""

    def add(self, seq: int, rev: int, now: float) -> None:
        if rev <= self.last_rev:
            self.disorder += 1
        self.last_rev = rev
        self.seqs.append(seq)
        self.times.append(now)


def _seq(key: bytes) -> int:
    return int(key[key.rindex(b"/") + 1:])


async def _stream(system: str, address: str, prefix: bytes, ids: list[int], watches: dict[int, _Watch],
                  created: asyncio.Event, pending: list[int], messages: list[int]) -> None:
    """One bidirectional Watch stream holding the watches `ids`."""
    import grpc

    queue: asyncio.Queue[Any] = asyncio.Queue()
    if system == "raftkv":
        from raftkv.proto.stubs import watch_pb2 as wpb
        from raftkv.proto.stubs import watch_pb2_grpc as wgrpc

        for wid in ids:
            queue.put_nowait(wpb.WatchRequest(create=wpb.WatchCreateRequest(key=prefix, prefix=True, watch_id=wid)))
        stub_call = wgrpc.WatchStub
    else:
        from raftkv.proto.etcd_stubs import rpc_pb2 as epb
        from raftkv.proto.etcd_stubs import rpc_pb2_grpc as egrpc

        end = prefix[:-1] + bytes([prefix[-1] + 1])
        for wid in ids:
            queue.put_nowait(epb.WatchRequest(create_request=epb.WatchCreateRequest(key=prefix, range_end=end,
                                                                                    watch_id=wid)))
        stub_call = egrpc.WatchStub

    async def requests():  # noqa: ANN202 - an async generator of the stream's requests
        while True:
            item = await queue.get()
            if item is None:
                return
            yield item

    async with grpc.aio.insecure_channel(address) as ch:
        call = stub_call(ch).Watch(requests())
        try:
            async for r in call:
                w = watches.get(r.watch_id)
                if w is None:
                    continue
                if r.created:
                    pending[0] -= 1
                    if pending[0] == 0:
                        created.set()
                if r.canceled:
                    w.canceled = r.cancel_reason or "canceled"
                    if not r.created:
                        pending[0] -= 1
                        if pending[0] == 0:
                            created.set()
                if r.events:
                    messages[0] += 1
                    now = time.monotonic()
                    for ev in r.events:
                        w.add(_seq(ev.kv.key), ev.kv.mod_revision, now)
        except grpc.aio.AioRpcError as e:
            for wid in ids:
                watches[wid].canceled = watches[wid].canceled or f"stream ended: {e.code().name} {e.details()}"
            pending[0] = 0
            created.set()
        except asyncio.CancelledError:
            call.cancel()
            raise


async def _watch_main(system: str, plan: list[tuple[str, list[int]]], prefix: bytes, conn: Connection) -> None:
    watches = {wid: _Watch() for _, ids in plan for wid in ids}
    messages = [0]
    created = asyncio.Event()
    pending = [len(watches)]
    tasks = [asyncio.create_task(_stream(system, addr, prefix, ids, watches, created, pending, messages))
             for addr, ids in plan]
    try:
        await asyncio.wait_for(created.wait(), CREATE_TIMEOUT_S)
    except TimeoutError:
        pass
    conn.send(("ready", sum(1 for w in watches.values() if not w.canceled)))
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    loop = asyncio.get_running_loop()
    # The parent sends the acknowledged writes once the writer is done: {seq: ack time}, and a drain deadline.
    acked, drain_s = await loop.run_in_executor(None, conn.recv)
    deadline = time.monotonic() + drain_s
    n = len(acked)
    while time.monotonic() < deadline:
        if all(len(w.seqs) >= n or w.canceled for w in watches.values()):
            break
        await asyncio.sleep(0.05)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    summary = _summarize(watches, acked)
    summary["messages"] = messages[0]
    summary["cpu_s"] = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime  # the writes and the drain
    conn.send(summary)


def _summarize(watches: dict[int, _Watch], acked: dict[int, float]) -> dict[str, Any]:
    """Per process: delays from acknowledgement to delivery, and whether each watch got each acked event
    once, in revision order."""
    delays = array("d")
    complete = 0
    problems: list[str] = []
    orders: dict[str, int] = {}
    first = last = None
    events = extra = 0
    for wid, w in watches.items():
        seen = set()
        dup = 0
        for s, t in zip(w.seqs, w.times, strict=True):
            if s in seen:
                dup += 1
                continue
            seen.add(s)
            a = acked.get(s)
            if a is None:
                extra += 1  # a write whose ack the writer did not get (timed out) but which committed
                continue
            delays.append(t - a)
        events += len(w.seqs)
        if w.times:
            first = w.times[0] if first is None else min(first, w.times[0])
            last = w.times[-1] if last is None else max(last, w.times[-1])
        missing = len(acked.keys() - seen)
        if missing == 0 and dup == 0 and w.disorder == 0 and not w.canceled:
            complete += 1
            digest = hashlib.blake2b(w.seqs.tobytes(), digest_size=8).hexdigest()
            orders[digest] = orders.get(digest, 0) + 1
        elif len(problems) < 5:
            problems.append(f"watch {wid}: {missing} missing, {dup} repeated, {w.disorder} out of order"
                            + (f", canceled: {w.canceled}" if w.canceled else ""))
    return {"watches": len(watches), "complete": complete, "problems": problems, "orders": orders,
            "events": events, "unacked_events": extra, "first": first, "last": last, "delays": delays.tobytes()}


def watcher_process(system: str, plan: list[tuple[str, list[int]]], prefix: bytes, conn: Connection) -> None:
    """Entry point of one spawned watcher process."""
    asyncio.run(_watch_main(system, plan, prefix, conn))


async def write_at_rate(system: str, address: str, prefix: bytes, rate: float, seconds: float,
                        max_in_flight: int = 64) -> dict[str, Any]:
    """Puts `prefix<seq>` at `rate`/s for `seconds` (open loop, at most `max_in_flight` outstanding; a put
    due while that many are outstanding is skipped and counted). {seq: ack time} of the acknowledged ones."""
    import grpc

    if system == "raftkv":
        from raftkv.proto.stubs import kv_pb2 as pb
        from raftkv.proto.stubs import kv_pb2_grpc as g

        def put(stub: Any, key: bytes) -> Any:
            return stub.Put(pb.PutRequest(key=key, value=b"x" * 16), timeout=10)
        make = g.KVStub
    else:
        from raftkv.proto.etcd_stubs import rpc_pb2 as epb
        from raftkv.proto.etcd_stubs import rpc_pb2_grpc as eg

        def put(stub: Any, key: bytes) -> Any:
            return stub.Put(epb.PutRequest(key=key, value=b"x" * 16), timeout=10)
        make = eg.KVStub
    acked: dict[int, float] = {}
    sent_at: dict[int, float] = {}
    failed = skipped = 0
    in_flight = 0
    tasks: set[asyncio.Task[None]] = set()
    async with grpc.aio.insecure_channel(address) as ch:
        stub = make(ch)

        async def one(seq: int) -> None:
            nonlocal failed, in_flight
            sent_at[seq] = time.monotonic()
            try:
                await put(stub, prefix + b"%09d" % seq)
                acked[seq] = time.monotonic()
            except grpc.aio.AioRpcError:
                failed += 1
            finally:
                in_flight -= 1

        start = time.monotonic()
        seq = 0
        while (now := time.monotonic()) - start < seconds:
            due = int((now - start) * rate)
            while seq < due:
                if in_flight >= max_in_flight:
                    skipped += 1
                else:
                    in_flight += 1
                    t = asyncio.get_running_loop().create_task(one(seq))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                seq += 1
            await asyncio.sleep(min(0.005, 1 / rate))
        if tasks:
            await asyncio.wait(tasks, timeout=15)
    ack_lat = sorted(acked[s] - sent_at[s] for s in acked)
    return {"acked": acked, "failed": failed, "skipped": skipped, "start": start,
            "write_p50_ms": round(ack_lat[len(ack_lat) // 2] * 1000, 2) if ack_lat else None,
            "write_p99_ms": round(ack_lat[max(0, int(len(ack_lat) * 0.99) - 1)] * 1000, 2) if ack_lat else None}
