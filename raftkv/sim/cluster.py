"""One simulated run: N nodes, a network, disks, a client, and a seeded schedule of faults.

Time advances in units; every `tick_every` units each live node's clock ticks once. In each unit: due
messages are delivered, finished fsyncs complete (persisted messages go out, committed entries apply),
clocks tick, the fault schedule and the client act, and each idle node hands over its next Ready. The
invariants are checked as things happen. The run ends with every fault healed and every node restarted,
and must then elect a leader and commit a new write within a bounded time (liveness).
"""

from __future__ import annotations

import heapq
import random
import traceback
from collections import deque
from dataclasses import dataclass, field

from ..core import (
    ConfChange,
    ConfChangeRejected,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    MemoryStorage,
    Message,
    MessageType,
    ProposalDropped,
    RaftNode,
    StateRole,
)
from .host import NodeFactory, SimHost
from .invariants import SafetyChecker, Violation
from .network import LinkFaults, SimNetwork

ALL_FAULTS = ("drop", "delay", "duplicate", "partition", "asymmetric", "isolate-leader", "crash", "membership",
              "transfer", "snapshot")


def default_factory(cfg: Config, storage: MemoryStorage) -> RaftNode:
    return RaftNode(cfg, storage)


@dataclass(slots=True)
class SimOptions:
    nodes: int = 3
    seed: int = 1
    faults: tuple[str, ...] = ALL_FAULTS
    duration: int = 4000
    """Time units of faulty operation before the final heal."""
    tick_every: int = 10
    election_tick: int = 10
    liveness_ticks: int = 200
    """After the heal, a new write must commit within this many ticks (20 election timeouts)."""
    fault_every: tuple[int, int] = (40, 160)
    propose_every: int = 4
    max_uncommitted: int = 16
    new_leader_crash: float = 0.3
    """Chance that a newly elected leader crashes within a few time units (with "crash" faults on)."""
    new_leader_crash_within: int = 12
    max_inflight_msgs: int | None = None
    """APP messages in flight per follower; None picks per seed."""
    max_size_per_msg: int | None = None
    """Bytes per APP; None picks per seed (small values split entries across messages, as in Figure 8)."""
    trace: bool = False
    trace_keep: int = 300


@dataclass(slots=True)
class SimResult:
    seed: int
    nodes: int
    steps: int
    elections: int
    commits: int
    faults: int
    messages: int
    violation: Violation | None
    trace: list[str] = field(default_factory=list)

    def replay_command(self, faults: tuple[str, ...]) -> str:
        f = "all" if set(faults) == set(ALL_FAULTS) else ",".join(faults) or "none"
        return f"python -m raftkv.sim --nodes {self.nodes} --seed {self.seed} --faults {f} --trace"


def _describe(m: Message) -> str:
    extra = ""
    if m.entries:
        extra = f" ents={m.entries[0].index}..{m.entries[-1].index}"
    if m.reject:
        extra += f" reject hint={m.reject_hint}"
    return f"{m.type.name} {m.frm}->{m.to} t{m.term} i{m.index} lt{m.log_term} c{m.commit}{extra}"


class Cluster:
    def __init__(self, opts: SimOptions, factory: NodeFactory = default_factory) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.net = SimNetwork(random.Random(self.rng.getrandbits(64)))
        self.checker = SafetyChecker()
        ids = list(range(1, opts.nodes + 1))
        conf = ConfState(frozenset(ids))
        size = opts.max_size_per_msg
        if size is None:
            size = self.rng.choice([1, 64, 1 << 20])
        tmpl: dict[str, object] = {"election_tick": opts.election_tick, "heartbeat_tick": 1,
                                   "max_size_per_msg": size,
                                   "max_inflight_msgs": opts.max_inflight_msgs or self.rng.choice([1, 4, 64])}
        self.hosts = {i: SimHost(i, MemoryStorage(conf), factory, tmpl, opts.seed) for i in ids}
        self.now = 0
        self.faults = 0
        self.proposed = 0
        self.removed: list[int] = []
        self._trace: deque[str] = deque(maxlen=opts.trace_keep)
        self._next_fault = self._schedule_fault()
        self._timers: list[tuple[int, int, str, int]] = []  # (when, seq, action, node id)
        self._timer_seq = 0

    # -- tracing -------------------------------------------------------------------------------
    def log(self, text: str) -> None:
        line = f"[{self.now:6d}] {text}"
        if self.opts.trace:
            print(line)
        self._trace.append(line)

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> SimResult:
        violation = None
        try:
            while self.now < self.opts.duration:
                self.step(faulty=True)
            self.heal_all()
            self.check_liveness()
            self.checker.check_log_matching([h.node for h in self.hosts.values()])
        except Violation as v:
            violation = v
            self.log(f"VIOLATION {v}")
        except Exception as e:  # an exception inside the core is a bug too: report it like a violation
            where = traceback.extract_tb(e.__traceback__)[-1]
            violation = Violation("no internal errors", f"{type(e).__name__}: {e} (at {where.filename}:{where.lineno})")
            self.log(f"VIOLATION {violation}")
        return SimResult(self.opts.seed, self.opts.nodes, self.now, self.checker.elections,
                         self.checker.max_applied, self.faults, self.net.sent, violation, list(self._trace))

    def step(self, faulty: bool) -> None:
        self.now += 1
        now = self.now
        hosts = self.hosts
        for m in self.net.due(now):
            h = hosts.get(m.to)
            if h is not None and h.up:
                if self.opts.trace:
                    self.log("deliver " + _describe(m))
                h.node.step(m)
        for h in hosts.values():
            if h.in_flight is not None and h.done_at <= now and h.up:
                rd = h.complete(self._on_apply)
                for m in rd.persisted_messages:
                    self.net.send(m, now)
        if now % self.opts.tick_every == 0:
            for h in hosts.values():
                if h.up:
                    h.node.tick()
        while self._timers and self._timers[0][0] <= now:
            _, _, action, nid = heapq.heappop(self._timers)
            h = hosts[nid]
            if action == "crash" and h.up and faulty:
                h.crash()
                self.log(f"crash node {nid} right after it won an election")
            elif action == "restart" and not h.up:
                h.restart()
                self.log(f"restart node {nid}")
        if faulty and now >= self._next_fault:
            self.inject_fault()
            self._next_fault = now + self._schedule_fault()
        if faulty and now % self.opts.propose_every == 0:
            self.propose(background=True)
        for h in hosts.values():
            rd = h.take_ready(now, self.rng.randint(1, 3))
            if rd is None:
                continue
            if rd.soft_state is not None:
                self.log(f"node {h.id} {rd.soft_state.role.name.lower()} term {h.node.term} "
                         f"leader {rd.soft_state.leader}")
                if faulty and rd.soft_state.role == StateRole.LEADER and "crash" in self.opts.faults \
                        and self.rng.random() < self.opts.new_leader_crash:
                    # A leader that dies moments after winning leaves a half-replicated log behind: the
                    # schedule of the paper's Figure 8.
                    when = now + self.rng.randint(1, self.opts.new_leader_crash_within)
                    self._timer(when, "crash", h.id)
                    self._timer(when + self.rng.randint(20, 300), "restart", h.id)
            for m in rd.messages:
                self.net.send(m, now)
                if m.type == MessageType.SNAP:
                    # As the real host does: report the snapshot once handed to the network. If it is lost,
                    # the follower's silence (then a heartbeat) makes the leader send it again.
                    h.node.report_snapshot(m.to, True)
        leaders = [h.node for h in hosts.values() if h.up and h.node.role == StateRole.LEADER]
        if leaders:
            self.checker.leaders(leaders)
        if now % 500 == 0:
            self.checker.check_log_matching([h.node for h in hosts.values()])

    def _timer(self, when: int, action: str, nid: int) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, action, nid))

    def _on_apply(self, node_id: int, e: Entry) -> None:
        self.checker.on_apply(node_id, e)

    def leader(self) -> SimHost | None:
        best = None
        for h in self.hosts.values():
            if h.up and h.node.role == StateRole.LEADER and (best is None or h.node.term > best.node.term):
                best = h
        return best

    def propose(self, data: bytes | None = None, background: bool = False) -> int | None:
        h = self.leader()
        if h is None:
            return None
        log = h.node.raft_log
        if background and log.last_index() - log.committed > self.opts.max_uncommitted:
            return None  # a client with bounded concurrency waits for earlier writes first
        self.proposed += 1
        payload = data or f"s{self.opts.seed}-w{self.proposed}".encode()
        try:
            return h.node.propose(payload)
        except ProposalDropped:
            return None

    # -- faults --------------------------------------------------------------------------------
    def _schedule_fault(self) -> int:
        lo, hi = self.opts.fault_every
        return self.rng.randint(lo, hi)

    def inject_fault(self) -> None:
        enabled = self.opts.faults
        if not enabled:
            return
        kind = self.rng.choice(enabled + ("heal", "heal"))
        ids = sorted(self.hosts)
        net = self.net
        if kind == "heal":
            net.heal()
            for h in self.hosts.values():
                if not h.up:
                    h.restart()
                    self.log(f"restart node {h.id}")
            self.log("heal network")
            return
        self.faults += 1
        if kind == "drop":
            net.faults = LinkFaults(drop=self.rng.uniform(0.05, 0.4), duplicate=net.faults.duplicate,
                                    max_delay=net.faults.max_delay)
            self.log(f"drop {net.faults.drop:.2f} of messages")
        elif kind == "delay":
            net.faults = LinkFaults(drop=net.faults.drop, duplicate=net.faults.duplicate,
                                    max_delay=self.rng.choice([5, 15, 40]))
            self.log(f"delay/reorder messages up to {net.faults.max_delay}")
        elif kind == "duplicate":
            net.faults = LinkFaults(drop=net.faults.drop, duplicate=self.rng.uniform(0.05, 0.3),
                                    max_delay=net.faults.max_delay)
            self.log(f"duplicate {net.faults.duplicate:.2f} of messages")
        elif kind in ("partition", "asymmetric"):
            shuffled = ids[:]
            self.rng.shuffle(shuffled)
            cut = self.rng.randint(1, len(ids) - 1)
            groups = [set(shuffled[:cut]), set(shuffled[cut:])]
            net.partition(groups, one_way=kind == "asymmetric")
            self.log(f"{kind} partition {sorted(groups[0])} | {sorted(groups[1])}")
        elif kind == "isolate-leader":
            h = self.leader()
            if h is not None:
                net.partition([{h.id}, set(ids) - {h.id}])
                self.log(f"isolate leader {h.id}")
        elif kind == "crash":
            up = [h for h in self.hosts.values() if h.up]
            if not up:
                return
            leader = self.leader()
            # Prefer the leader half of the time: leader crashes right after partial replication are where
            # the subtle bugs live (the paper's Figure 8).
            victim = leader if leader is not None and self.rng.random() < 0.5 else self.rng.choice(up)
            victim.crash()
            self.log(f"crash node {victim.id} (unsynced writes lost)")
            down = [h for h in self.hosts.values() if not h.up and h is not victim]
            if down and self.rng.random() < 0.7:
                back = self.rng.choice(down)
                back.restart()
                self.log(f"restart node {back.id}")
        elif kind == "membership":
            self._membership_change()
        elif kind == "transfer":
            h = self.leader()
            if h is not None:
                target = self.rng.choice(sorted(h.node.conf.voters))
                try:
                    h.node.transfer_leader(target)
                    self.log(f"transfer leadership {h.id} -> {target}")
                except ProposalDropped:
                    pass
        elif kind == "snapshot":
            h = self.rng.choice([h for h in self.hosts.values() if h.up] or list(self.hosts.values()))
            idx = h.applied_index
            st = h.storage
            if h.up and idx > st.first_index() + 5 and h.in_flight is None and idx <= st.last_index():
                st.create_snapshot(idx, h.node.conf_as_of(idx), b"sim-state@%d" % idx)
                st.compact(idx)
                self.log(f"node {h.id} snapshot and compact through {idx}")

    def _membership_change(self) -> None:
        h = self.leader()
        if h is None:
            return
        conf = h.node.conf
        if self.removed and self.rng.random() < 0.6:
            nid = self.removed[0]
            if nid in conf.learners:
                cc = ConfChange(ConfChangeType.PROMOTE_LEARNER, nid)
            elif nid in conf.voters:
                self.removed.pop(0)
                return
            else:
                cc = ConfChange(ConfChangeType.ADD_LEARNER, nid)
        else:
            if len(conf.voters) <= 2:
                return
            nid = self.rng.choice(sorted(conf.voters))
            cc = ConfChange(ConfChangeType.REMOVE_NODE, nid)
        try:
            h.node.propose_conf_change(cc)
        except (ConfChangeRejected, ProposalDropped) as e:
            self.log(f"membership change {cc.type.name} {cc.node_id} refused: {e}")
            return
        if cc.type == ConfChangeType.REMOVE_NODE and nid not in self.removed:
            self.removed.append(nid)
        if cc.type == ConfChangeType.PROMOTE_LEARNER:
            self.removed.remove(nid)
        self.log(f"membership change {cc.type.name} {cc.node_id} proposed by {h.id}")

    # -- the end ---------------------------------------------------------------------------------
    def heal_all(self) -> None:
        self.net.heal()
        for h in self.hosts.values():
            if not h.up:
                h.restart()
        self.log("final heal: network whole, every node running")

    def check_liveness(self) -> None:
        """A leader must emerge and a new write commit within liveness_ticks after the heal."""
        limit = self.now + self.opts.liveness_ticks * self.opts.tick_every
        probe = f"s{self.opts.seed}-liveness".encode()
        proposed_at: int | None = None
        while self.now < limit:
            self.step(faulty=False)
            leader = self.leader()
            if leader is None:
                continue
            if any(a.data == probe for a in leader.applied):
                return
            if proposed_at is None or self.now - proposed_at > 10 * self.opts.tick_every:
                if self.propose(probe) is not None:
                    proposed_at = self.now
        who = self.leader()
        raise Violation(
            "liveness",
            f"no write committed within {self.opts.liveness_ticks} ticks after every fault healed "
            f"(leader: {who.id if who else 'none'})",
        )
