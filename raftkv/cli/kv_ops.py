"""`kv` verbs for operators, as etcdctl has them: `endpoint health [--cluster]`, `endpoint status`, `version`,
`check perf`, and the aliases `member` (of `members`) and `move-leader` (of `leader transfer`).

Each takes `-w simple|json|table`. Exit codes as the rest of kv (kv_args): 0 healthy / passed, 1 an
endpoint is unhealthy or the check failed (the output says which and why), 2 bad usage."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import click

from .kv_args import EXIT_BAD_USAGE, EXIT_ERROR, SECONDS, fail

if TYPE_CHECKING:
    from .kv import Ctx

API_VERSION = "raftkv.v1"
HEALTH_KEY = b"health"
"""What `endpoint health` reads (linearizable, so a node without a working quorum is unhealthy); etcdctl
reads the same key."""
PERF_PREFIX = "/raftkv-check-perf/"


def register(main: click.Group) -> None:
    """Add this module's verbs to the `kv` group (called once, from kv.py). The aliased commands are taken
    from `main` itself: kv.py may run as __main__, a module apart from an imported raftkv.cli.kv."""
    endpoint.add_command(main.commands["status"], name="status")
    main.add_command(endpoint)
    main.add_command(version)
    check = main.commands.get("check")
    if not isinstance(check, click.Group):
        check = click.Group("check", help="Checks of the cluster (as etcdctl check).")
        main.add_command(check)
    check.add_command(perf)
    main.add_command(main.commands["members"], name="member")
    leader = main.commands["leader"]
    assert isinstance(leader, click.Group)
    main.add_command(leader.commands["transfer"], name="move-leader")


def _echo(c: Ctx, doc: Any, headers: list[str], rows: list[list[Any]], lines: list[str]) -> None:
    from .kv import table

    if c.out == "json":
        click.echo(json.dumps(doc))
    elif c.out == "table":
        click.echo(table(headers, rows))
    else:
        for line in lines:
            click.echo(line)


# ---------------------------------------------------------------------------------------------- endpoint
@click.group()
def endpoint() -> None:
    """Endpoint health and status (as etcdctl endpoint)."""


@dataclass
class Health:
    endpoint: str
    health: bool
    took: str = ""
    error: str = ""


def _health_of(c: Ctx, ep: str) -> Health:
    """Healthy: the node answers within the dial and command timeouts, knows a leader, holds no alarm and
    serves a linearizable read (which needs a working quorum)."""
    from ..client import RaftKVError

    t0 = time.perf_counter()
    try:
        s = c.client.status(endpoint=ep, timeout=min(c.dial_timeout, c.command_timeout))
        problems = [*s.alarms, s.identity_problem] if s.identity_problem else list(s.alarms)
        if not s.leader_id:
            problems.insert(0, "no leader")
        if problems:
            return Health(ep, False, error="; ".join(problems))
        c.client.get(HEALTH_KEY, consistency="linearizable", endpoint=ep)
    except RaftKVError as e:
        return Health(ep, False, error=str(e).splitlines()[0] if str(e) else type(e).__name__)
    return Health(ep, True, took=f"{(time.perf_counter() - t0) * 1000:.1f}ms")


def _cluster_endpoints(c: Ctx) -> list[str]:
    from .kv import run

    r = run(lambda: c.client.members())
    return [m.address for m in r.members if m.address]


@endpoint.command(name="health")
@click.option("--cluster", is_flag=True, help="Check every member's address, from the member list.")
@click.pass_obj
def endpoint_health(c: Ctx, cluster: bool) -> None:
    """Whether each endpoint is healthy: it has a leader, no alarm, and serves a linearizable read.
    Exits 1 if any is not."""
    eps = _cluster_endpoints(c) if cluster else [e.strip() for e in c.endpoints.split(",") if e.strip()]
    results = [_health_of(c, ep) for ep in eps]
    _echo(c, [asdict(h) for h in results], ["endpoint", "health", "took", "error"],
          [[h.endpoint, str(h.health).lower(), h.took, h.error] for h in results],
          [f"{h.endpoint} is healthy: successfully committed proposal: took = {h.took}" if h.health
           else f"{h.endpoint} is unhealthy: {h.error}" for h in results])
    if not all(h.health for h in results):
        if c.out != "simple":
            click.echo("Error: unhealthy cluster", err=True)
        raise SystemExit(EXIT_ERROR)


# ----------------------------------------------------------------------------------------------- version
def _kv_version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("raftkv")
    except PackageNotFoundError:
        return "unknown"


@click.command()
@click.pass_obj
def version(c: Ctx) -> None:
    """The version of kv and of the API it speaks (no node is asked)."""
    v = _kv_version()
    _echo(c, {"kv_version": v, "api_version": API_VERSION}, ["kv version", "api version"], [[v, API_VERSION]],
          [f"kv version: {v}", f"API version: {API_VERSION}"])


# ------------------------------------------------------------------------------------------------- check
LOADS = {"s": (150, 50), "m": (1000, 200), "l": (8000, 500), "xl": (15000, 1000)}
"""etcdctl check perf's loads: target writes per second and clients."""


@dataclass
class PerfResult:
    load: str
    target_rate: int
    clients: int
    duration_seconds: float
    writes: int = 0
    errors: int = 0
    throughput: float = 0.0
    slowest_seconds: float = 0.0
    stddev_seconds: float = 0.0
    p99_seconds: float = 0.0
    checks: list[dict[str, Any]] = field(default_factory=list)
    passed: bool = False


async def _perf_load(c: Ctx, target: int, clients: int, duration: float, value: bytes) -> tuple[list[float], int]:
    """`clients` writers together putting `target` keys per second for `duration` seconds (each at its own
    slots: no burst). Returns each write's latency and the number that failed."""
    from ..client import RaftKVError
    from ..client.async_client import AsyncClient

    tls = c.client.tls  # the same TLS files as every other command
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter() + 0.05
    writes = max(1, int(target * duration))

    async with AsyncClient(c.endpoints, timeout=c.command_timeout, tls=tls, batching=True,
                           connect_timeout=min(c.dial_timeout, c.command_timeout)) as client:
        async def writer(w: int) -> None:
            nonlocal errors
            for n in range(w, writes, clients):
                delay = start + n / target - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                t0 = time.perf_counter()
                try:
                    await client.put(f"{PERF_PREFIX}{n:08d}".encode(), value)
                except RaftKVError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(writer(w) for w in range(clients)))
    return latencies, errors


@click.command()
@click.option("--load", type=click.Choice(sorted(LOADS)), default="s", show_default=True,
              help="Target load: s 150 writes/s by 50 clients, m 1000/200, l 8000/500, xl 15000/1000.")
@click.option("--duration", type=SECONDS, default=10.0, show_default=True, help="Seconds of load (bounded).")
@click.option("--max-latency", type=SECONDS, default=0.5, show_default=True,
              help="FAIL if the slowest write took longer (seconds).")
@click.option("--max-stddev", type=SECONDS, default=0.1, show_default=True,
              help="FAIL if write latency's standard deviation is larger (seconds).")
@click.pass_obj
def perf(c: Ctx, load: str, duration: float, max_latency: float, max_stddev: float) -> None:
    """Put a bounded load of 256-byte writes under /raftkv-check-perf/ and report PASS or FAIL against
    thresholds, as etcdctl check perf: throughput at least 90 % of the target, the slowest write and the
    latency's spread under their limits, no failed write. The keys are deleted afterwards. Exits 1 on FAIL."""
    from .kv import run

    if duration > 600:
        fail("--duration is at most 600 seconds", EXIT_BAD_USAGE)
    target, clients = LOADS[load]
    run(lambda: c.client.members())  # a cluster that cannot be reached fails here, within --dial-timeout
    t0 = time.perf_counter()
    latencies, errors = asyncio.run(_perf_load(c, target, clients, duration, b"x" * 256))
    took = time.perf_counter() - t0
    run(lambda: c.client.delete(PERF_PREFIX.encode(), prefix=True))
    r = PerfResult(load, target, clients, round(took, 3), writes=len(latencies), errors=errors)
    if latencies:
        latencies.sort()
        r.throughput = round(len(latencies) / max(took, 1e-9), 1)
        r.slowest_seconds = round(latencies[-1], 6)
        r.stddev_seconds = round(statistics.pstdev(latencies), 6)
        r.p99_seconds = round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 6)
    r.checks = [
        {"check": "throughput", "passed": r.throughput >= 0.9 * target,
         "detail": f"{r.throughput:.0f} writes/s (target {target}, at least {0.9 * target:.0f})"},
        {"check": "slowest request", "passed": bool(latencies) and r.slowest_seconds <= max_latency,
         "detail": f"took {r.slowest_seconds:.6f}s (at most {max_latency}s)"},
        {"check": "stddev", "passed": bool(latencies) and r.stddev_seconds <= max_stddev,
         "detail": f"{r.stddev_seconds:.6f}s (at most {max_stddev}s)"},
        {"check": "errors", "passed": errors == 0, "detail": f"{errors} of {len(latencies) + errors} writes failed"},
    ]
    r.passed = all(ch["passed"] for ch in r.checks)
    verdict = ["PASS" if ch["passed"] else "FAIL" for ch in r.checks]
    _echo(c, asdict(r), ["check", "result", "detail"],
          [[ch["check"], v, ch["detail"]] for ch, v in zip(r.checks, verdict, strict=True)],
          [f"{v}: {ch['check']}: {ch['detail']}" for ch, v in zip(r.checks, verdict, strict=True)]
          + [f"p99 {r.p99_seconds * 1000:.1f} ms over {r.writes} writes in {r.duration_seconds:.1f} s",
             "PASS" if r.passed else "FAIL"])
    if not r.passed:
        raise SystemExit(EXIT_ERROR)
