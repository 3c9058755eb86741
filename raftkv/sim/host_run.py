"""One run of the host simulator: real NodeHosts, the real ack and read policies (layers/), over the
simulated world (world.py) and simulated time (loop.py).

Swarm testing: each seed draws its own cluster size, tick and election settings, lease reads,
compaction thresholds, fault mix (crashes, partitions, message loss, duplication and delay, slow fsyncs,
torn writes, a flipped bit on a stopped node's disk) and client mix (ack levels, read levels, sessions).
Simulated clients issue writes and reads and record a history (history.py), checked after the run,
besides Raft's invariants checked as it goes (invariants.py). A failing seed replays exactly:
`python -m raftkv.sim --host --seed S`, which prints a shrunk history of the keys involved."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import structlog

from ..core import Entry, StateRole
from ..layers.acks import AckLevel, AckPolicy, AckRequest
from ..layers.read_path import ForwardToLeader, prepare_read
from ..layers.reads import ReadLevel, StalenessBound
from ..layers.session import SessionToken, newest
from ..server.config import ServerConfig
from ..storage.commands import Put, encode
from .history import History, HistoryViolation, Op, check
from .invariants import SafetyChecker, Violation
from .loop import SimLoop, SimulationIdle
from .world import CLUSTER_ID, DiskFaults, LinkFaults, SimNode, World

HOST_FAULTS = ("crash", "partition", "drop", "duplicate", "delay", "slow-fsync", "torn-write", "flip-bit",
               "disk-full")
WRITE_LEVELS = ("leader", "majority", "semi_sync", "sync")
READ_LEVELS = ("linearizable", "lease", "serializable", "bounded_staleness", "session")


@dataclass(slots=True)
class HostSimOptions:
    seed: int = 1
    duration_s: float = 2.0
    """Simulated seconds of faulty operation before the final heal."""
    nodes: int | None = None
    """None: drawn per seed (1-7)."""
    faults: tuple[str, ...] | None = None
    """None: a mix drawn per seed from HOST_FAULTS."""
    clients: int = 4
    keys: int = 3
    trace: bool = False
    trace_keep: int = 200


@dataclass(slots=True)
class Swarm:
    """What one seed drew."""

    nodes: int
    tick_ms: int
    election_ticks: int
    heartbeat_ticks: int
    lease_reads: bool
    snapshot_entries: int
    snapshot_keep: int
    faults: tuple[str, ...]
    write_levels: tuple[str, ...]
    read_levels: tuple[str, ...]

    def line(self) -> str:
        return (f"nodes={self.nodes} tick={self.tick_ms}ms election={self.election_ticks} "
                f"heartbeat={self.heartbeat_ticks} lease_reads={self.lease_reads} "
                f"snapshot={self.snapshot_entries}/{self.snapshot_keep} faults={','.join(self.faults) or 'none'} "
                f"writes={','.join(self.write_levels)} reads={','.join(self.read_levels)}")


def draw_swarm(rng: random.Random, opts: HostSimOptions) -> Swarm:
    nodes = opts.nodes or rng.choice([1, 2, 3, 3, 3, 4, 5, 5, 7])
    faults = opts.faults if opts.faults is not None else tuple(f for f in HOST_FAULTS if rng.random() < 0.5)
    writes = tuple(w for w in WRITE_LEVELS if rng.random() < 0.6) or ("majority",)
    reads = tuple(r for r in READ_LEVELS if rng.random() < 0.6) or ("linearizable",)
    return Swarm(nodes, rng.choice([5, 10, 20]), rng.choice([5, 10, 20]), rng.choice([1, 1, 2]),
                 rng.random() < 0.5, rng.choice([20, 100, 100_000]), rng.choice([2, 10, 50]), faults, writes, reads)


@dataclass
class HostSimResult:
    seed: int
    swarm: Swarm
    ops: int
    acked_writes: int
    reads: int
    crashes: int
    violation: Violation | None
    shrunk: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)

    def replay_command(self) -> str:
        return f"python -m raftkv.sim --host --seed {self.seed}"


class HostCluster:
    def __init__(self, opts: HostSimOptions) -> None:
        self.opts = opts
        self.loop = SimLoop()
        self._trace: deque[str] = deque(maxlen=opts.trace_keep)
        self.world = World(opts.seed, self.loop, self.log)
        rng = self.world.rng
        self.swarm = draw_swarm(rng, opts)
        sw = self.swarm
        w = self.world
        w.disk_faults = DiskFaults(fsync_ms=(0.1, rng.choice([0.5, 2.0, 8.0])),
                                   slow_fsync=0.02 if "slow-fsync" in sw.faults else 0.0,
                                   torn_write=0.7 if "torn-write" in sw.faults else 0.0)
        w.net.faults = LinkFaults(delay_ms=(0.1, rng.choice([1.0, 3.0])))
        peers = {i: f"sim-{i}:1" for i in range(1, sw.nodes + 1)}
        self.nodes: dict[int, SimNode] = {}
        for i in peers:
            cfg = ServerConfig(id=i, data_dir=f"/nonexistent/raftkv-sim/{i}", peers=peers, tick_ms=sw.tick_ms,
                               election_ticks=sw.election_ticks, heartbeat_ticks=sw.heartbeat_ticks,
                               lease_reads=sw.lease_reads, snapshot_entries=sw.snapshot_entries,
                               snapshot_keep_entries=sw.snapshot_keep, read_wait_ms=4 * sw.election_ticks * sw.tick_ms)
            self.nodes[i] = SimNode(i, cfg, w)
        self.checker = SafetyChecker()
        self.history = History()
        self.policies: dict[int, AckPolicy] = {}
        self.crashes = 0
        self._flipped: set[int] = set()
        self._stop = False
        self._seq = 0

    # -- tracing ---------------------------------------------------------------------------------------
    def log(self, text: str) -> None:
        line = f"[{self.loop.time() * 1000:9.2f} ms] {text}"
        if self.opts.trace:
            print(line)
        self._trace.append(line)

    # -- the run -----------------------------------------------------------------------------------------
    def run(self) -> HostSimResult:
        violation: Violation | None = None
        shrunk: list[str] = []
        old = structlog.get_config()
        structlog.configure(processors=[_quiet], cache_logger_on_first_use=False)
        try:
            self.loop.run_until_complete(self._main())
        except HistoryViolation as v:
            violation = Violation(v.check, v.detail)
            shrunk = [(">> " if o in v.ops else "   ") + o.line() for o in self.history.relevant(v.ops)]
        except Violation as v:
            violation = v
        except SimulationIdle as e:
            violation = Violation("no internal errors", f"the simulation stalled: {e}")
        except Exception as e:  # noqa: BLE001 - an exception in the host or the layers is a bug too
            where = traceback.extract_tb(e.__traceback__)[-1]
            violation = Violation("no internal errors", f"{type(e).__name__}: {e} (at {where.filename}:{where.lineno})")
        finally:
            structlog.configure(**old)
            self._close()
        if violation is not None:
            self.log(f"VIOLATION {violation}")
        ops = self.history.ops
        return HostSimResult(self.opts.seed, self.swarm, len(ops),
                             sum(1 for o in ops if o.kind == "write" and o.ok),
                             sum(1 for o in ops if o.kind == "read" and o.ok), self.crashes, violation, shrunk,
                             list(self._trace))

    def _close(self) -> None:
        loop = self.loop
        for n in self.nodes.values():
            n.crash()
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            try:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            except BaseException:  # noqa: BLE001 - tearing down a failed run
                pass
        loop.close()

    async def _main(self) -> None:
        for n in self.nodes.values():
            await n.start()
            self._watch(n)
        self.log(f"swarm: {self.swarm.line()}")
        tasks = [asyncio.create_task(self._client(c)) for c in range(1, self.opts.clients + 1)]
        tasks.append(asyncio.create_task(self._nemesis()))
        tasks.append(asyncio.create_task(self._invariants()))
        await asyncio.sleep(self.opts.duration_s)
        self._stop = True
        await asyncio.gather(*tasks)
        await self._heal()
        final = await self._final_reads()
        self._check_flips()
        check(self.history, final)

    def _watch(self, n: SimNode) -> None:
        if n.host is None:
            return
        store = n.host.store
        nid = n.id

        def applied(e: Entry) -> None:
            self.checker.on_apply(nid, e)

        store.on_apply = applied  # type: ignore[attr-defined]
        self.policies[nid] = AckPolicy(n.host)

    def _up(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up]

    def _leader(self) -> SimNode | None:
        best = None
        for n in self._up():
            assert n.host is not None
            if n.host.is_leader and (best is None or n.host.node.term > best.host.node.term):  # type: ignore[union-attr]
                best = n
        return best

    async def _invariants(self) -> None:
        while not self._stop:
            await asyncio.sleep(0.005)
            leaders = [n.host.node for n in self._up() if n.host is not None and n.host.node.role == StateRole.LEADER]
            if leaders:
                self.checker.leaders(leaders)

    # -- clients -------------------------------------------------------------------------------------------
    async def _client(self, cid: int) -> None:
        rng = random.Random(self.world.rng.getrandbits(64))
        sw = self.swarm
        token: SessionToken | None = None
        n = 0
        while not self._stop:
            await asyncio.sleep(rng.uniform(0.0005, 0.02))
            key = b"k%d" % rng.randrange(self.opts.keys)
            if rng.random() < 0.5:
                n += 1
                done = await self._write(cid, key, b"c%d-%d" % (cid, n), rng.choice(sw.write_levels), rng)
            else:
                done = await self._read(cid, key, rng.choice(sw.read_levels), token, rng)
            if done.ok and done.index_seen:
                token = newest(token, SessionToken(index=done.index_seen, term=done.term_seen))

    async def _write(self, cid: int, key: bytes, value: bytes, level: str, rng: random.Random) -> _Done:
        op = self.history.add(Op(cid, "write", key, level, self.loop.time(), value=value))
        ack = AckRequest(AckLevel(level), min_replicas=1, timeout_ms=rng.choice([20, 100]))
        target = self._leader() or rng.choice(self._up() or list(self.nodes.values()))
        done = _Done()
        try:
            if target.host is None:
                raise ConnectionError("node down")
            op.node = target.id
            out = await asyncio.wait_for(self.policies[target.id].write(encode(Put(key, value)), ack,
                                                                         needs_result=level != "leader"), 1.0)
            op.ok, op.revision = True, out.index
            done.set(True, out.index, out.term)
            if out.ack.degraded:
                op.level = "majority"  # answered DEGRADED: it promises what a majority write does
            if level == "leader":
                op.level = "leader"
        except Exception as e:  # noqa: BLE001 - any failure: the write may or may not have happened
            op.error = type(e).__name__
        op.completed = self.loop.time()
        return done

    async def _read(self, cid: int, key: bytes, level: str, token: SessionToken | None, rng: random.Random) -> _Done:
        op = self.history.add(Op(cid, "read", key, level, self.loop.time()))
        done = _Done()
        bound = None
        if level == "bounded_staleness":
            bound = StalenessBound(max_staleness_ms=rng.choice([20, 100, 500]), strict=rng.random() < 0.5)
            op.bound_ms = float(bound.max_staleness_ms or 0)
        tok = token.encode(CLUSTER_ID) if token is not None and level == "session" else b""
        if level == "session" and token is None:
            op.level = level = "serializable"
        target = rng.choice(self._up() or list(self.nodes.values()))
        try:
            for _ in range(3):
                if target.host is None:
                    raise ConnectionError("node down")
                host = target.host
                try:
                    await asyncio.wait_for(prepare_read(host, ReadLevel(level), bound, tok, CLUSTER_ID), 1.0)
                except ForwardToLeader:
                    target = self._leader() or target  # as the api forwards to the leader it knows
                    continue
                op.node = target.id
                kv, applied = host.read(lambda s: s.get_at(key))
                op.ok = True
                op.revision = kv.mod_revision if kv is not None else 0
                op.value = kv.value if kv is not None else b""
                done.set(True, applied, host.node.raft_log.term_or_zero(applied))
                break
        except Exception as e:  # noqa: BLE001 - a failed read promises nothing
            op.error = type(e).__name__
        op.completed = self.loop.time()
        return done

    # -- faults --------------------------------------------------------------------------------------------
    async def _nemesis(self) -> None:
        rng = random.Random(self.world.rng.getrandbits(64))
        faults = self.swarm.faults
        net = self.world.net
        while not self._stop and faults:
            await asyncio.sleep(rng.uniform(0.05, 0.3))
            if self._stop:
                break
            kind = rng.choice(faults + ("heal",))
            ids = sorted(self.nodes)
            if kind == "heal":
                net.heal()
                for n in self.nodes.values():
                    n.space.full = False
                for n in self.nodes.values():
                    if not n.up and not n.corrupt:
                        await self._restart(n)
                self.log("heal")
            elif kind == "crash" or (kind in ("torn-write", "flip-bit") and self._up()):
                up = self._up()
                if not up:
                    continue
                leader = self._leader()
                victim = leader if leader is not None and rng.random() < 0.5 else rng.choice(up)
                victim.crash()
                self.crashes += 1
                self.log(f"crash node {victim.id}")
                if kind == "flip-bit" and len(self.nodes) >= 3 and not self._flipped and victim.disk.log:
                    idx = rng.choice(sorted(victim.disk.log))
                    victim.disk.flip_bit(idx, rng.randrange(64))
                    self._flipped.add(victim.id)
                    self.log(f"flip a bit of log entry {idx} on node {victim.id}'s disk")
            elif kind == "partition" and len(ids) > 1:
                shuffled = ids[:]
                rng.shuffle(shuffled)
                cut = rng.randint(1, len(ids) - 1)
                groups = [set(shuffled[:cut]), set(shuffled[cut:])]
                net.partition(groups, one_way=rng.random() < 0.3)
                self.log(f"partition {sorted(groups[0])} | {sorted(groups[1])}")
            elif kind == "drop":
                net.faults.drop = rng.uniform(0.05, 0.3)
                self.log(f"drop {net.faults.drop:.2f}")
            elif kind == "duplicate":
                net.faults.duplicate = rng.uniform(0.05, 0.3)
                self.log(f"duplicate {net.faults.duplicate:.2f}")
            elif kind == "delay":
                net.faults.delay_ms = (0.1, rng.choice([5.0, 20.0]))
                self.log(f"delay up to {net.faults.delay_ms[1]} ms")
            elif kind == "disk-full":
                n = rng.choice(list(self.nodes.values()))
                n.space.full = True
                self.log(f"node {n.id}'s disk is full")
            elif kind == "slow-fsync":
                pass  # drawn per transaction (DiskFaults.slow_fsync)

    async def _restart(self, n: SimNode) -> None:
        if await n.start():
            self._watch(n)
            self.log(f"restart node {n.id}")

    def _check_flips(self) -> None:
        for nid in self._flipped:
            n = self.nodes[nid]
            if not n.corrupt:
                raise Violation("flipped bit detected", f"node {nid} restarted over a flipped bit without noticing")

    # -- the end ---------------------------------------------------------------------------------------------
    async def _heal(self) -> None:
        self.world.net.heal()
        for n in self.nodes.values():
            n.space.full = False
        for n in self.nodes.values():
            if not n.up and not n.corrupt:
                await self._restart(n)
        self.log("final heal: network whole, every node that can start running")

    async def _final_reads(self) -> dict[bytes, int]:
        """After the heal: a leader must emerge and serve a linearizable read of every key (liveness);
        what it reads is the final state the history is checked against."""
        sw = self.swarm
        limit = self.loop.time() + 200 * sw.election_ticks * sw.tick_ms / 1000
        final: dict[bytes, int] = {}
        keys = [b"k%d" % i for i in range(self.opts.keys)]
        while self.loop.time() < limit and len(final) < len(keys):
            await asyncio.sleep(0.01)
            leader = self._leader()
            if leader is None or leader.host is None:
                continue
            host = leader.host
            try:
                await asyncio.wait_for(prepare_read(host, ReadLevel.LINEARIZABLE, None, b"", CLUSTER_ID), 1.0)
            except Exception:  # noqa: BLE001 - try again until the limit
                continue
            for k in keys:
                kv, _ = host.read(lambda s, k=k: s.get_at(k))
                final[k] = kv.mod_revision if kv is not None else 0
        if len(final) < len(keys):
            who = self._leader()
            raise Violation("liveness", f"no linearizable read served within 200 election timeouts after the "
                            f"heal (leader: {who.id if who else 'none'})")
        return final


def _quiet(logger: object, name: str, event: dict[str, object]) -> dict[str, object]:
    """The nodes' logs are dropped in the simulator: the trace says what happened."""
    raise structlog.DropEvent


class _Done:
    """What a client learns from a reply for its session token."""

    __slots__ = ("ok", "index_seen", "term_seen")

    def __init__(self) -> None:
        self.ok = False
        self.index_seen = 0
        self.term_seen = 0

    def set(self, ok: bool, index: int, term: int) -> None:
        self.ok, self.index_seen, self.term_seen = ok, index, term


def run_host_seed(seed: int, base: HostSimOptions | None = None) -> HostSimResult:
    return HostCluster(dataclasses.replace(base or HostSimOptions(), seed=seed)).run()


@dataclass(slots=True)
class HostSummary:
    seeds: int = 0
    ops: int = 0
    acked_writes: int = 0
    reads: int = 0
    crashes: int = 0
    failures: list[HostSimResult] = field(default_factory=list)
    elapsed: float = 0.0

    def add(self, r: HostSimResult) -> None:
        self.seeds += 1
        self.ops += r.ops
        self.acked_writes += r.acked_writes
        self.reads += r.reads
        self.crashes += r.crashes
        if r.violation is not None:
            self.failures.append(r)

    def line(self) -> str:
        rate = self.seeds / self.elapsed if self.elapsed else 0.0
        return (f"host seeds={self.seeds} ops={self.ops} acked_writes={self.acked_writes} reads={self.reads} "
                f"crashes={self.crashes} violations={len(self.failures)} elapsed={self.elapsed:.1f}s "
                f"({rate:.1f} seeds/s)")


def run_host_seeds(seeds: Iterable[int], base: HostSimOptions | None = None,
                   on_result: Callable[[HostSimResult], None] | None = None,
                   stop_at_first: bool = False) -> HostSummary:
    summary = HostSummary()
    t0 = time.perf_counter()
    for seed in seeds:
        r = run_host_seed(seed, base)
        summary.add(r)
        if on_result is not None:
            on_result(r)
        if stop_at_first and r.violation is not None:
            break
    summary.elapsed = time.perf_counter() - t0
    return summary
