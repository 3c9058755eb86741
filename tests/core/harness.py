"""An in-process cluster for scenario tests of the core, and a runner for scenarios written as text.

Persistence is instant (MemoryStorage), message delivery is explicit: nothing moves until a scenario says
`stabilize` (deliver until quiet) or `deliver A B` (one batch on one link). Links can be cut. A scenario
reads like etcd's datadriven tests:

    cluster 3
    campaign 1
    stabilize
    expect role 1 leader
    propose 1 hello
    stabilize
    expect commit * 3
"""

from __future__ import annotations

import random
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

from raftkv.core import (
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    RaftNode,
    ReadState,
    StateRole,
)

ROLE_NAMES = {
    "leader": StateRole.LEADER,
    "follower": StateRole.FOLLOWER,
    "candidate": StateRole.CANDIDATE,
    "pre-candidate": StateRole.PRE_CANDIDATE,
}


@dataclass
class SimNode:
    storage: MemoryStorage
    node: RaftNode
    applied: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    rounds_sent: list[tuple[int, int]] = field(default_factory=list)  # Ready.round_sent, in order


class Net:
    def __init__(self, voters: list[int], learners: list[int] = (), **cfg: object) -> None:
        self.cfg = cfg
        self.conf = ConfState(frozenset(voters), frozenset(learners))
        self.nodes: dict[int, SimNode] = {}
        self.queue: list[Message] = []
        self.cut: set[tuple[int, int]] = set()
        self.sent_log: list[Message] = []
        self.stamp_clock = 0
        for nid in list(voters) + list(learners):
            self.nodes[nid] = self._new(nid, MemoryStorage(self.conf))

    def _new(self, nid: int, storage: MemoryStorage, applied: int = 0) -> SimNode:
        cfg = Config(id=nid, rng=random.Random(nid), applied=applied, **self.cfg)
        return SimNode(storage, RaftNode(cfg, storage))

    def add_node(self, nid: int) -> None:
        """A brand-new, empty node (to be added by a membership change)."""
        self.nodes[nid] = self._new(nid, MemoryStorage(ConfState()))

    def node(self, nid: int) -> RaftNode:
        return self.nodes[nid].node

    # -- I/O the way a host does it -----------------------------------------------------------
    def process(self, nid: int) -> bool:
        sn = self.nodes[nid]
        n = sn.node
        if not n.has_ready():
            return False
        rd = n.ready()
        if rd.snapshot is not None:
            sn.storage.apply_snapshot(rd.snapshot)
            sn.applied = [Entry(rd.snapshot.meta.term, rd.snapshot.meta.index, EntryType.NORMAL, b"<snapshot>")]
        sn.storage.append(rd.entries)
        if rd.hard_state is not None:
            sn.storage.set_hard_state(rd.hard_state)
        for m in rd.messages + rd.persisted_messages:
            if m.type in (MessageType.APP_RESP, MessageType.HEARTBEAT_RESP):
                self.stamp_clock += 1
                m.stamp = self.stamp_clock
            self.queue.append(m)
            self.sent_log.append(m)
        sn.applied.extend(rd.committed_entries)
        sn.read_states.extend(rd.read_states)
        if rd.round_sent is not None:
            sn.rounds_sent.append(rd.round_sent)
        n.advance(rd)
        return True

    def process_all(self) -> None:
        while any([self.process(nid) for nid in list(self.nodes)]):
            pass

    def deliver(self, frm: int | None = None, to: int | None = None,
                keep: Callable[[Message], bool] | None = None) -> int:
        """Deliver queued messages (optionally only on one link); messages on cut links are dropped."""
        self.process_all()
        batch, rest = [], []
        for m in self.queue:
            if (frm is None or m.frm == frm) and (to is None or m.to == to):
                batch.append(m)
            else:
                rest.append(m)
        self.queue = rest
        n = 0
        for m in batch:
            if (m.frm, m.to) in self.cut or m.to not in self.nodes:
                continue
            if keep is not None and not keep(m):
                continue
            self.nodes[m.to].node.step(m)
            n += 1
        self.process_all()
        return n

    def stabilize(self, limit: int = 10_000) -> None:
        for _ in range(limit):
            self.process_all()
            if not self.queue:
                return
            self.deliver()
        raise AssertionError("cluster did not stabilize")

    def tick(self, nid: int, n: int = 1) -> None:
        for _ in range(n):
            self.nodes[nid].node.tick()

    def tick_all(self, n: int = 1, stabilize: bool = True) -> None:
        for _ in range(n):
            for sn in self.nodes.values():
                sn.node.tick()
            if stabilize:
                self.stabilize()

    def isolate(self, nid: int) -> None:
        for other in self.nodes:
            if other != nid:
                self.cut.add((nid, other))
                self.cut.add((other, nid))

    def partition(self, *groups: list[int]) -> None:
        for g in groups:
            for a in g:
                for b in self.nodes:
                    if b not in g:
                        self.cut.add((a, b))
                        self.cut.add((b, a))

    def heal(self) -> None:
        self.cut.clear()

    def crash(self, nid: int) -> None:
        """Restart `nid` from its storage (everything it processed was durable: persistence is instant)."""
        sn = self.nodes[nid]
        self.queue = [m for m in self.queue if m.to != nid and m.frm != nid]
        applied = sn.applied[-1].index if sn.applied else 0
        fresh = self._new(nid, sn.storage, applied)
        fresh.applied = sn.applied
        self.nodes[nid] = fresh

    def leader(self) -> int | None:
        leaders = [nid for nid, sn in self.nodes.items() if sn.node.role == StateRole.LEADER]
        return max(leaders, key=lambda nid: self.node(nid).term) if leaders else None

    def log_terms(self, nid: int) -> list[tuple[int, int]]:
        log = self.node(nid).raft_log
        return [(e.index, e.term) for e in log.entries(log.first_index())]


# ------------------------------------------------------------------------------------------------
# Text scenarios
# ------------------------------------------------------------------------------------------------

def _ids(net: Net, spec: str) -> list[int]:
    return sorted(net.nodes) if spec == "*" else [int(x) for x in spec.split(",")]


def run_scenario(text: str, **cfg: object) -> Net:
    """Run a scenario; an `expect` that does not hold raises AssertionError naming the line."""
    net: Net | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = shlex.split(line)
        cmd, args = words[0], words[1:]
        where = f"line {lineno}: {line!r}"
        if cmd == "cluster":
            # cluster N [learner-ids] [option=value ...], e.g. `cluster 3 check_quorum=false`
            opts = dict(cfg)
            learners: list[int] = []
            for a in args[1:]:
                if "=" in a:
                    k, v = a.split("=", 1)
                    opts[k] = {"true": True, "false": False}.get(v, int(v) if v.isdigit() else v)
                else:
                    learners = [int(x) for x in a.split(",")]
            net = Net(list(range(1, int(args[0]) + 1)), learners, **opts)
            continue
        assert net is not None, f"{where}: no cluster yet"
        if cmd == "campaign":
            net.node(int(args[0])).campaign()
        elif cmd == "stabilize":
            net.stabilize()
        elif cmd == "deliver":
            net.deliver(int(args[0]), int(args[1]))
        elif cmd == "propose":
            net.node(int(args[0])).propose(args[1].encode())
        elif cmd == "tick":
            for nid in _ids(net, args[0]):
                net.tick(nid, int(args[1]) if len(args) > 1 else 1)
            net.process_all()
        elif cmd == "tick-all":
            net.tick_all(int(args[0]))
        elif cmd == "isolate":
            net.isolate(int(args[0]))
        elif cmd == "partition":
            net.partition(*[[int(x) for x in g.split(",")] for g in args])
        elif cmd == "heal":
            net.heal()
        elif cmd == "crash":
            net.crash(int(args[0]))
        elif cmd == "add-node":
            net.add_node(int(args[0]))
        elif cmd == "conf-change":
            kind = {"add": ConfChangeType.ADD_VOTER, "remove": ConfChangeType.REMOVE_NODE,
                    "learner": ConfChangeType.ADD_LEARNER, "promote": ConfChangeType.PROMOTE_LEARNER}[args[1]]
            net.node(int(args[0])).propose_conf_change(ConfChange(kind, int(args[2])))
        elif cmd == "transfer":
            net.node(int(args[0])).transfer_leader(int(args[1]))
        elif cmd == "read-index":
            net.node(int(args[0])).read_index(args[1].encode())
        elif cmd == "expect":
            _expect(net, args, where)
        else:
            raise AssertionError(f"{where}: unknown command {cmd}")
    assert net is not None
    return net


def _expect(net: Net, args: list[str], where: str) -> None:
    what, nodes, want = args[0], args[1], args[2:]
    for nid in _ids(net, nodes):
        n = net.node(nid)
        if what == "role":
            got: object = n.role
            exp: object = ROLE_NAMES[want[0]]
        elif what == "term":
            got, exp = n.term, int(want[0])
        elif what == "commit":
            got, exp = n.raft_log.committed, int(want[0])
        elif what == "leader":
            got, exp = n.leader_id, int(want[0])
        elif what == "last-index":
            got, exp = n.raft_log.last_index(), int(want[0])
        elif what == "log":  # index:term pairs
            got = net.log_terms(nid)
            exp = [tuple(int(x) for x in p.split(":")) for p in want]
        elif what == "applied":
            got = [e.data.decode() for e in net.nodes[nid].applied if e.data and e.type == EntryType.NORMAL]
            exp = want
        elif what == "voters":
            got = sorted(n.conf.voters)
            exp = [int(x) for x in want[0].split(",")] if want else []
        elif what == "learners":
            got = sorted(n.conf.learners)
            exp = [int(x) for x in want[0].split(",")] if want else []
        elif what == "read-states":
            got = [(rs.index, rs.context.decode()) for rs in net.nodes[nid].read_states]
            exp = [(int(p.split(":")[0]), p.split(":")[1]) for p in want]
        elif what == "removed-at":  # index of the configuration a leader said this node is not in (0: none)
            got, exp = n.removed_at(), int(want[0])
        elif what == "lease-held":  # the lease's conditions that need no clock
            got, exp = n.lease_held(), want[0] == "yes"
        elif what == "confirmed-round":  # term:number:commit of the newest confirmed round, or none
            cr = n.confirmed_round()
            got = "none" if cr is None else f"{cr.term}:{cr.number}:{cr.commit}"
            exp = want[0]
        elif what == "round-sent":  # term:number of the newest round a Ready reported sent, or none
            sent = net.nodes[nid].rounds_sent
            got = f"{sent[-1][0]}:{sent[-1][1]}" if sent else "none"
            exp = want[0]
        else:
            raise AssertionError(f"{where}: unknown expectation {what}")
        assert got == exp, f"{where}: node {nid} {what} is {got}, expected {exp}"
