"""The load generator: separate client processes, each with many concurrent operations on one asyncio
loop, bounded in time and in operations. The parent measures the servers' CPU and memory over exactly
the window in which the clients run, and prints a progress line meanwhile."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .procstat import loadavg, sample
from .spec import RunSpec

CTX = mp.get_context("spawn")  # grpc does not survive fork; every client starts clean


@dataclass
class WorkerResult:
    reads: int = 0
    writes: int = 0
    read_lat: bytes = b""   # array('f') of seconds
    write_lat: bytes = b""
    errors: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    cpu_s: float = 0.0
    failure: str = ""


def _worker(spec: RunSpec, index: int, slots: list[int], budget: int, start: Any, progress: Any, out: Any) -> None:
    try:
        res = asyncio.run(_worker_async(spec, index, slots, budget, start, progress))
    except BaseException as e:  # noqa: BLE001 - the parent must hear of any failure
        res = WorkerResult(failure=f"{type(e).__name__}: {e}")
        try:
            start.abort()
        except Exception:  # noqa: BLE001
            pass
    out.put((index, res))


async def _worker_async(spec: RunSpec, index: int, slots: list[int], budget: int, start: Any, progress: Any
                        ) -> WorkerResult:
    from .drivers import make_driver

    driver = make_driver(spec)
    await driver.connect()
    loop = asyncio.get_running_loop()
    # One operation per slot before the clock starts: connections up, caches warm. A cluster still
    # settling (an election after the previous run) gets a few seconds to answer.
    async def warm(s: int) -> None:
        give_up = time.monotonic() + 20
        while True:
            try:
                if spec.read_ratio >= 1.0:
                    await driver.get(s % max(1, spec.keys), s)
                else:
                    await driver.put(s % max(1, spec.keys), s)
                return
            except Exception:
                if time.monotonic() > give_up:
                    raise
                await asyncio.sleep(0.1)

    await asyncio.gather(*(warm(s) for s in slots))
    await loop.run_in_executor(None, start.wait, 120)
    res = WorkerResult()
    read_lat = array("f")
    write_lat = array("f")
    errors: Counter[str] = Counter()
    done = 0
    t0 = time.perf_counter()
    deadline = t0 + spec.duration_s
    cpu0 = time.process_time()

    async def one_slot(slot: int) -> None:
        nonlocal done
        rng = random.Random(spec.seed * 1_000_003 + slot)
        keys, ratio = spec.keys, spec.read_ratio
        get, put, clock = driver.get, driver.put, time.perf_counter
        while done < budget:
            now = clock()
            if now >= deadline:
                return
            k = rng.randrange(keys)
            is_read = ratio >= 1.0 or (ratio > 0.0 and rng.random() < ratio)
            try:
                if is_read:
                    await get(k, slot)
                    read_lat.append(clock() - now)
                else:
                    await put(k, slot)
                    write_lat.append(clock() - now)
                done += 1
            except Exception as e:  # noqa: BLE001 - counted and reported, never hidden
                code = getattr(e, "code", None)
                name = code().name if callable(code) else type(e).__name__
                errors[name] += 1
                await asyncio.sleep(0.01)

    async def report() -> None:
        while True:
            progress.value = done
            await asyncio.sleep(0.2)

    reporter = asyncio.create_task(report())
    await asyncio.gather(*(one_slot(s) for s in slots))
    res.elapsed_s = time.perf_counter() - t0
    res.cpu_s = time.process_time() - cpu0
    reporter.cancel()
    progress.value = done
    await driver.close()
    res.reads, res.writes = len(read_lat), len(write_lat)
    res.read_lat, res.write_lat = read_lat.tobytes(), write_lat.tobytes()
    res.errors = dict(errors)
    return res


def _fmt_progress(label: str, spec: RunSpec, elapsed: float, ops: int) -> str:
    rate = ops / elapsed if elapsed > 0 else 0.0
    return (f"  {label:<42} c={spec.concurrency:<4} {min(elapsed, spec.duration_s):5.1f}/{spec.duration_s:.0f}s "
            f"{ops:>9,} ops {rate:>9,.0f} ops/s")


def run_load(spec: RunSpec, server_pids: dict[int, int], quiet: bool = False,
             probe: Callable[[], Any] | None = None,
             on_start: Callable[[list[int]], Any] | None = None) -> dict[str, Any]:
    """Drive `spec` against a running cluster; returns the raw measurements of the run."""
    slots_by_proc = [list(range(p, spec.concurrency, spec.procs)) for p in range(spec.procs)]
    per_proc_budget = max(1, spec.max_ops // spec.procs)
    start = CTX.Barrier(spec.procs + 1)
    out = CTX.Queue()
    counters = [CTX.Value("q", 0, lock=False) for _ in range(spec.procs)]
    procs = [CTX.Process(target=_worker, args=(spec, i, slots_by_proc[i], per_proc_budget, start, counters[i], out),
                         daemon=True, name=f"bench-client-{i}") for i in range(spec.procs)]
    for p in procs:
        p.start()
    results: dict[int, WorkerResult] = {}
    finished = False
    try:
        try:
            start.wait(180)
        except Exception:  # noqa: BLE001 - a worker failed before the start: collect its message below
            pass
        load_start = loadavg()
        before = {i: sample(pid) for i, pid in server_pids.items()}
        probe_before = probe() if probe else None
        if on_start is not None:
            on_start([p.pid for p in procs if p.pid is not None])
        t0 = time.monotonic()
        hard_stop = t0 + spec.duration_s + 60
        tty = sys.stderr.isatty()
        last_line = 0.0
        while len(results) < spec.procs and time.monotonic() < hard_stop:
            try:
                idx, res = out.get(timeout=0.5)
                results[idx] = res
            except Exception:  # noqa: BLE001 - queue.Empty: print progress and wait on
                pass
            now = time.monotonic()
            if not quiet and (tty or now - last_line >= 5):
                line = _fmt_progress(spec.label, spec, now - t0, sum(c.value for c in counters))
                print("\r" + line if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
                last_line = now
        after = {i: sample(pid) for i, pid in server_pids.items()}
        probe_after = probe() if probe else None
        window = time.monotonic() - t0
        if not quiet and tty:
            print(file=sys.stderr)
        finished = True
    finally:
        for p in procs:
            if not finished:  # interrupted: the clients stop now, not at the end of their run
                p.terminate()
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)
    failures = [r.failure for r in results.values() if r.failure]
    if len(results) < spec.procs or failures:
        raise RuntimeError(f"client processes failed: {failures or 'no result before the hard stop'}")
    reads = array("f")
    writes = array("f")
    errors: Counter[str] = Counter()
    for r in results.values():
        reads.frombytes(r.read_lat)
        writes.frombytes(r.write_lat)
        errors.update(r.errors)
    elapsed = max(r.elapsed_s for r in results.values())
    return {
        "reads": len(reads), "writes": len(writes), "elapsed_s": elapsed, "window_s": window,
        "read_lat": reads, "write_lat": writes, "errors": dict(errors),
        "client_cpu_s": sum(r.cpu_s for r in results.values()),
        "server_before": before, "server_after": after, "loadavg_start": load_start, "loadavg_end": loadavg(),
        "probe_before": probe_before, "probe_after": probe_after,
    }


def _preload_worker(spec: RunSpec, lo: int, hi: int, batch: int, inflight: int, deadline_s: float, out: Any) -> None:
    async def go() -> int:
        from .drivers import make_driver

        driver = make_driver(spec)
        stop = time.monotonic() + deadline_s
        nxt = lo
        loaded = 0

        async def lane() -> None:
            nonlocal nxt, loaded
            while nxt < hi and time.monotonic() < stop:
                a, b = nxt, min(hi, nxt + batch)
                nxt = b
                await driver.put_many(range(a, b))
                loaded += b - a

        try:
            await asyncio.gather(*(lane() for _ in range(inflight)))
        finally:
            await driver.close()
        return loaded

    try:
        out.put(("ok", asyncio.run(go())))
    except BaseException as e:  # noqa: BLE001
        out.put(("error", f"{type(e).__name__}: {e}"))


def preload(spec: RunSpec, keys: int, timeout_s: float = 600.0, quiet: bool = False, first: int = 0
            ) -> dict[str, Any]:
    """Write keys first..keys-1 with batched, atomic multi-put transactions, bounded by `timeout_s`.
    Returns how many keys were written and how long it took (it may stop short at the bound)."""
    per_op = spec.key_size + spec.value_size + 16
    limit = 1000 if spec.system == "raftkv" else 128  # etcd's default --max-txn-ops is 128
    batch = max(1, min(limit, (1 << 20) // per_op))
    out = CTX.Queue()
    t0 = time.monotonic()
    p = CTX.Process(target=_preload_worker, args=(spec, first, keys, batch, 4, timeout_s, out), daemon=True)
    p.start()
    status, value = "error", "no answer"
    while True:
        try:
            status, value = out.get(timeout=1.0)
            break
        except Exception:  # noqa: BLE001 - still loading
            if not p.is_alive() or time.monotonic() - t0 > timeout_s + 120:
                break
            if not quiet and int(time.monotonic() - t0) % 10 == 0:
                print(f"  preloading {keys:,} keys ({spec.value_size} B values) on {spec.system}: "
                      f"{time.monotonic() - t0:.0f}s", file=sys.stderr, flush=True)
    p.join(10)
    if p.is_alive():
        p.terminate()
    if status != "ok":
        raise RuntimeError(f"preload failed: {value}")
    took = time.monotonic() - t0
    return {"keys_requested": keys - first, "keys_loaded": int(value), "seconds": round(took, 2), "batch": batch,
            "keys_per_s": round(int(value) / took) if took else None, "complete": int(value) >= keys - first}
