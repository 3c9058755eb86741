"""One run of the simulator: real NodeHosts, the real ack and read policies (layers/), over the simulated
world (world.py) and simulated time (loop.py).

Each seed draws its swarm (swarm.py) and a fault schedule (schedule.py): crashes (a newly elected leader's
too, for the paper's Figure 8), partitions, message loss, duplication and delay, slow fsyncs, torn writes,
a flipped bit on a stopped node's disk, a full disk, membership changes (learners added, caught up and
promoted; voters removed and, wiped, added back) and leadership transfers, on clocks that drift apart.
Simulated clients (clients.py) record a history (history.py), checked after the run; Raft's invariants
(invariants.py) are checked after every round of every leader's loop, at every apply, and periodically
over all logs. A failing seed replays exactly (`python -m raftkv.sim --seed S`) and shrinks (shrink.py)."""

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

from ..core import Config, Entry, LogStorage, RaftNode, StateRole
from ..core.raft import Raft
from ..layers.acks import AckPolicy
from ..layers.read_path import prepare_read
from ..layers.reads import ReadLevel
from ..server.config import ServerConfig
from ..storage.commands import Put, encode
from .clients import run_client, run_pipelined_client
from .history import History, HistoryViolation, Op, check
from .invariants import SafetyChecker, Violation
from .loop import SimClock, SimLoop, SimulationIdle
from .nemesis import Nemesis
from .schedule import Event, draw_schedule
from .swarm import FIGURE8, HostSimOptions, Swarm, draw_swarm
from .world import CLUSTER_ID, DiskFaults, LinkFaults, SimNode, World

__all__ = ["FIGURE8", "HostCluster", "HostSimOptions", "HostSimResult", "HostSummary", "run_host_seed",
           "run_host_seeds"]

LOG_MATCHING_EVERY_S = 0.25


@dataclass
class HostSimResult:
    seed: int
    opts: HostSimOptions
    swarm: Swarm
    events: list[Event]
    """The schedule this run followed (after keep_events)."""
    ops: int
    acked_writes: int
    reads: int
    crashes: int
    elections: int
    commits: int
    faults: int
    messages: int
    violation: Violation | None
    offending: list[Op] = field(default_factory=list)
    shrunk: list[str] = field(default_factory=list)
    """The history of the keys involved in the violation (>> marks the offending operations)."""
    trace: list[str] = field(default_factory=list)

    def replay_command(self) -> str:
        return replay_command(self.opts)


def replay_command(opts: HostSimOptions) -> str:
    cmd = f"python -m raftkv.sim --seed {opts.seed}"
    base = HostSimOptions()
    if opts.faults == FIGURE8.faults and opts.max_size_per_msg == 1 and opts.new_leader_crash == 0.5:
        cmd += " --figure8"
    else:
        if opts.nodes is not None:
            cmd += f" --nodes {opts.nodes}"
        if opts.witnesses:
            cmd += f" --witnesses {opts.witnesses}"
        if opts.faults is not None:
            cmd += f" --faults {','.join(opts.faults) or 'none'}"
    if opts.duration_s != base.duration_s:
        cmd += f" --duration {opts.duration_s:g}"
    if opts.keep_events is not None:
        cmd += f" --events {','.join(str(i) for i in sorted(opts.keep_events)) or 'none'}"
    if opts.keep_clients is not None:
        cmd += f" --clients-kept {','.join(str(i) for i in sorted(opts.keep_clients)) or 'none'}"
    return cmd


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
        self.schedule = draw_schedule(random.Random(rng.getrandbits(64)), sw.faults, opts.duration_s)
        if opts.keep_events is not None:
            self.schedule = [e for e in self.schedule if e.number in opts.keep_events]
        self._client_seeds = [rng.getrandbits(64) for _ in range(opts.clients)]
        self._crash_rng = random.Random(rng.getrandbits(64))
        founders = {i: f"sim-{i}:1" for i in range(1, sw.nodes + 1)}
        factory = self._raft_factory()
        self.nodes: dict[int, SimNode] = {}
        witnesses = sw.witness_ids()
        for i in range(1, sw.nodes + sw.spares + 1):
            founder = i in founders
            cfg = ServerConfig(id=i, data_dir=f"/nonexistent/raftkv-sim/{i}", peers=founders if founder else {},
                               witnesses=",".join(map(str, sorted(witnesses))) if founder else "",
                               witness=i in witnesses, join=not founder, tick_ms=sw.tick_ms, election_ticks=sw.election_ticks,
                               heartbeat_ticks=sw.heartbeat_ticks, lease_reads=sw.lease_reads,
                               snapshot_entries=sw.snapshot_entries, snapshot_keep_entries=sw.snapshot_keep,
                               read_wait_ms=4 * sw.election_ticks * sw.tick_ms)
            clock = SimClock(self.loop, offset_s=rng.uniform(0, 1000), rate=sw.rates[i - 1])
            self.nodes[i] = SimNode(i, cfg, w, clock, factory)
        self.checker = SafetyChecker()
        self.history = History()
        self.policies: dict[int, AckPolicy] = {}
        self.nemesis = Nemesis(self)
        self.crashes = 0
        self.flipped: set[int] = set()
        self.stopping = False
        self._violation: Violation | None = None
        self.started: set[int] = set()

    def _raft_factory(self) -> Callable[[Config, LogStorage], RaftNode]:
        sw = self.swarm
        cls = self.opts.raft_class or Raft

        def build(cfg: Config, log: LogStorage) -> RaftNode:
            return RaftNode(dataclasses.replace(cfg, max_size_per_msg=sw.max_size_per_msg,
                                                max_inflight_msgs=sw.max_inflight_msgs), log, cls)

        return build

    # -- tracing ---------------------------------------------------------------------------------------
    def log(self, text: str) -> None:
        line = f"[{self.loop.time() * 1000:9.2f} ms] {text}"
        if self.opts.trace:
            print(line)
        self._trace.append(line)

    # -- the run -----------------------------------------------------------------------------------------
    def run(self) -> HostSimResult:
        violation: Violation | None = None
        offending: list[Op] = []
        shrunk: list[str] = []
        old = structlog.get_config()
        structlog.configure(processors=[_quiet], cache_logger_on_first_use=False)
        try:
            self.loop.run_until_complete(self._main())
        except HistoryViolation as v:
            violation = Violation(v.check, v.detail)
            offending = v.ops
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
        if violation is None and self._violation is not None:
            violation = self._violation
        if violation is not None:
            self.log(f"VIOLATION {violation}")
        ops = self.history.ops
        return HostSimResult(self.opts.seed, self.opts, self.swarm, self.schedule, len(ops),
                             sum(1 for o in ops if o.kind == "write" and o.ok),
                             sum(1 for o in ops if o.kind == "read" and o.ok), self.crashes, self.checker.elections,
                             self.checker.max_applied, self.nemesis.applied, self.world.net.sent, violation,
                             offending, shrunk, list(self._trace))

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
            if not n.cfg.join:
                await self.restart(n, quiet=True)
        self.log(f"swarm: {self.swarm.line()}")
        clients = [i for i in range(1, self.opts.clients + 1)
                   if self.opts.keep_clients is None or i in self.opts.keep_clients]
        tasks = [asyncio.create_task(run_client(self, c, self._client_seeds[c - 1])) for c in clients]
        for p in range(self.swarm.pipelined):
            cid = self.opts.clients + 1 + p
            if self.opts.keep_clients is None or cid in self.opts.keep_clients:
                tasks.append(asyncio.create_task(run_pipelined_client(self, cid, self._client_seeds[-1] + cid)))
        tasks.append(asyncio.create_task(self._run_schedule()))
        tasks.append(asyncio.create_task(self._invariants()))
        await asyncio.sleep(self.opts.duration_s)
        self.stopping = True
        await asyncio.gather(*tasks)
        await self.nemesis.settle()
        self._raise_recorded()
        await self._heal()
        final = await self._final_reads()
        self._raise_recorded()
        self.checker.check_log_matching([n.host.node for n in self.up() if n.host is not None])
        self._check_flips()
        self._mark_lost_writes()
        check(self.history, final)

    def _mark_lost_writes(self) -> None:
        """A `leader`-level write is acknowledged before it commits and may be lost; one whose entry was
        never applied anywhere was (session checks leave it out)."""
        applied = self.checker.applied_at
        for o in self.history.ops:
            if o.kind == "write" and o.ok and o.level == "leader":
                seen = applied.get(o.revision)
                o.lost = seen is None or seen.data != encode(Put(o.key, o.value))

    async def _run_schedule(self) -> None:
        t0 = self.loop.time()
        for ev in self.schedule:
            await asyncio.sleep(max(0.0, t0 + ev.at_s - self.loop.time()))
            if self.stopping:
                return
            await self.nemesis.apply(ev)

    # -- nodes -------------------------------------------------------------------------------------------
    def up(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up]

    def leader(self) -> SimNode | None:
        best = None
        for n in self.up():
            assert n.host is not None
            if n.host.is_leader and (best is None or n.host.node.term > best.host.node.term):  # type: ignore[union-attr]
                best = n
        return best

    def crash(self, n: SimNode, why: str = "") -> None:
        n.crash()
        self.crashes += 1
        self.log(f"crash node {n.id}{why}")

    async def restart(self, n: SimNode, quiet: bool = False) -> None:
        if n.up:
            return
        if await n.start():
            self.started.add(n.id)
            self._watch(n)
            if not quiet:
                self.log(f"{'restart' if n.restarts else 'start'} node {n.id}")

    def _watch(self, n: SimNode) -> None:
        host = n.host
        if host is None:
            return
        nid = n.id

        def applied(e: Entry) -> None:
            if host.node.is_witness():
                return  # a witness applies no data (membership only): nothing to compare
            try:
                self.checker.on_apply(nid, e)
            except Violation as v:
                self._record(v)

        host.store.on_apply = applied  # type: ignore[attr-defined]
        host.every_round(lambda: self._leader_round(n, host))
        self.policies[nid] = AckPolicy(host)

    def _record(self, v: Violation) -> None:
        """A violation seen inside a host's loop: kept (raising there would only stop that host) and raised
        by the invariants task."""
        if self._violation is None:
            self._violation = v
            self.log(f"VIOLATION {v}")

    def _raise_recorded(self) -> None:
        if self._violation is not None:
            raise self._violation

    def _leader_round(self, n: SimNode, host: object) -> None:
        """After every round of a leader's loop: election safety and leader completeness; and, for the
        paper's Figure 8, a leader that crashes moments after winning (leaving a half-replicated log)."""
        if n.host is not host or n.host is None:
            return
        try:
            new = self.checker.observe_leader(n.host.node)
        except Violation as v:
            self._record(v)
            return
        sw = self.swarm
        if new and not self.stopping and sw.new_leader_crash and self._crash_rng.random() < sw.new_leader_crash:
            # Within a few message delays: after it has sent its first appends, before their answers
            # have all come back (the core's schedule in the paper's Figure 8, panels c and d).
            when = self._crash_rng.uniform(0.0, 4.0) * self.world.net.faults.delay_ms[1] / 1000
            back = when + self._crash_rng.uniform(2, 30) * sw.tick_ms / 1000
            self.loop.call_later(when, self._crash_new_leader, n, host)
            self.loop.call_later(back, self._restart_soon, n)

    def _crash_new_leader(self, n: SimNode, host: object) -> None:
        if n.host is host and not self.stopping:
            self.crash(n, " right after it won an election")

    def _restart_soon(self, n: SimNode) -> None:
        if not n.up and not n.corrupt and not self.stopping:
            asyncio.ensure_future(self.restart(n))

    async def _invariants(self) -> None:
        every = max(1, round(LOG_MATCHING_EVERY_S / 0.005))
        i = 0
        while not self.stopping:
            await asyncio.sleep(0.005)
            self._raise_recorded()
            leaders = [n.host.node for n in self.up() if n.host is not None and n.host.node.role == StateRole.LEADER]
            if leaders:
                self.checker.leaders(leaders)
            i += 1
            if i % every == 0:
                self.checker.check_log_matching([n.host.node for n in self.up() if n.host is not None])

    def _check_flips(self) -> None:
        for nid in self.flipped:
            n = self.nodes[nid]
            if not n.corrupt:
                raise Violation("flipped bit detected", f"node {nid} restarted over a flipped bit without noticing")

    # -- the end ---------------------------------------------------------------------------------------------
    async def _heal(self) -> None:
        self.world.net.heal()
        for n in self.nodes.values():
            n.space.full = False
        for n in self.nodes.values():
            if not n.up and not n.corrupt and n.id in self.started:
                await self.restart(n)
        self.log("final heal: network whole, every node that can start running")

    async def _final_reads(self) -> dict[bytes, int]:
        """After the heal: a leader must emerge and serve a linearizable read of every key (liveness);
        what it reads is the final state the history is checked against."""
        sw = self.swarm
        slowest = min(sw.rates)
        limit = self.loop.time() + 200 * sw.election_ticks * sw.tick_ms / 1000 / slowest
        if sw.max_size_per_msg < 1024:
            # Entries travel one per message: a log far ahead of the others takes a round trip per entry
            # to replicate before the new leader can commit (and so serve) anything.
            logs = [n.host.node.raft_log for n in self.up() if n.host is not None]
            if logs:
                backlog = max(g.last_index() for g in logs) - min(g.committed for g in logs)
                limit += backlog * 4 * self.world.net.faults.delay_ms[1] / 1000
        final: dict[bytes, int] = {}
        keys = [b"k%d" % i for i in range(self.opts.keys)]
        while self.loop.time() < limit and len(final) < len(keys):
            await asyncio.sleep(0.01)
            leader = self.leader()
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
            who = self.leader()
            raise Violation("liveness", f"no linearizable read served within 200 election timeouts after the "
                            f"heal (leader: {who.id if who else 'none'})")
        return final


def _quiet(logger: object, name: str, event: dict[str, object]) -> dict[str, object]:
    """The nodes' logs are dropped in the simulator: the trace says what happened."""
    raise structlog.DropEvent


def run_host_seed(seed: int, base: HostSimOptions | None = None) -> HostSimResult:
    return HostCluster(dataclasses.replace(base or HostSimOptions(), seed=seed)).run()


@dataclass(slots=True)
class HostSummary:
    seeds: int = 0
    ops: int = 0
    acked_writes: int = 0
    reads: int = 0
    crashes: int = 0
    elections: int = 0
    commits: int = 0
    faults: int = 0
    messages: int = 0
    failures: list[HostSimResult] = field(default_factory=list)
    elapsed: float = 0.0

    def add(self, r: HostSimResult) -> None:
        self.seeds += 1
        self.ops += r.ops
        self.acked_writes += r.acked_writes
        self.reads += r.reads
        self.crashes += r.crashes
        self.elections += r.elections
        self.commits += r.commits
        self.faults += r.faults
        self.messages += r.messages
        if r.violation is not None:
            self.failures.append(r)

    def line(self) -> str:
        rate = self.seeds / self.elapsed if self.elapsed else 0.0
        return (f"seeds={self.seeds} ops={self.ops} acked_writes={self.acked_writes} reads={self.reads} "
                f"elections={self.elections} commits={self.commits} faults={self.faults} crashes={self.crashes} "
                f"messages={self.messages} violations={len(self.failures)} elapsed={self.elapsed:.1f}s "
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
