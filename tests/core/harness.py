"""An in-process cluster for tests of the core: nodes on MemoryStorage, the Ready loop a host runs.

Persistence is instant (MemoryStorage), message delivery is explicit: nothing moves until a test says
`stabilize` (deliver until quiet) or `deliver(frm, to)` (one batch on one link). Links can be cut. With
`trace` set to a list, every Ready handled and every message delivered or lost is described there (the
datadriven scenarios in scenarios/ print it; see datadriven.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from raftkv.core import (
    ConfChange,
    Config,
    ConfState,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    RaftNode,
    ReadState,
    Ready,
    StateRole,
)
from raftkv.core.raft import Raft


@dataclass
class SimNode:
    storage: MemoryStorage
    node: RaftNode
    applied: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    rounds_sent: list[tuple[int, int]] = field(default_factory=list)  # Ready.round_sent, in order
    hold_next: bool = False
    """Hand over the next Ready's messages but keep its persistence pending (an fsync still running)."""
    held: Ready | None = None
    """That Ready, until `Net.persist` finishes it: meanwhile the node is stepped, but has no Ready."""


def _entry(e: Entry) -> str:
    out = f"{e.term}/{e.index}"
    if e.type == EntryType.CONF_CHANGE:
        cc = ConfChange.decode(e.data)
        return out + f" conf({cc.type.name.lower().replace('_', '-')} {cc.node_id})"
    if e.type == EntryType.STRIPPED:
        return out + " (no payload)"
    return out + (f" {e.data.decode(errors='replace')!r}" if e.data else "")


def describe_entries(ents: list[Entry]) -> str:
    return ", ".join(_entry(e) for e in ents)


def _ids_text(ids: frozenset[int]) -> str:
    return ",".join(str(i) for i in sorted(ids)) or "-"


def _conf(cs: ConfState) -> str:
    return (f"voters={_ids_text(cs.voters)}" + (f" learners={_ids_text(cs.learners)}" if cs.learners else "")
            + (f" witnesses={_ids_text(cs.witnesses)}" if cs.witnesses else ""))


def describe_message(m: Message) -> str:
    """One line per message: its Raft fields that differ from their defaults."""
    t = m.type
    parts = [f"{m.frm}->{m.to} {t.name}"]
    if m.term:
        parts.append(f"term={m.term}")
    if t in (MessageType.APP, MessageType.VOTE, MessageType.PRE_VOTE):
        parts.append(f"log={m.log_term}/{m.index}")
    else:
        if m.index:
            parts.append(f"index={m.index}")
        if m.log_term:
            parts.append(f"log_term={m.log_term}")
    if m.commit:
        parts.append(f"commit={m.commit}")
    if m.reject:
        parts.append("rejected")
    if m.reject_hint:
        parts.append(f"hint={m.reject_hint}")
    if m.entries:
        parts.append(f"entries=[{describe_entries(m.entries)}]")
    if m.data_floor:
        parts.append(f"floor={m.data_floor}")
    if m.snapshot is not None:
        meta = m.snapshot.meta
        parts.append(f"snapshot={meta.term}/{meta.index} {_conf(meta.conf)}")
    if m.context:
        if t in (MessageType.HEARTBEAT, MessageType.HEARTBEAT_RESP) and len(m.context) == 8:
            parts.append(f"round={int.from_bytes(m.context, 'big')}")
        else:
            parts.append(f"context={m.context.decode(errors='replace')!r}")
    return " ".join(parts)


def describe_ready(rd: Ready) -> list[str]:
    """A Ready in the order the host must do its work (see Ready's docstring)."""
    out: list[str] = []
    if rd.soft_state is not None:
        out.append(f"State: {rd.soft_state.role.name.lower().replace('_', '-')}, leader {rd.soft_state.leader}")
    if rd.hard_state is not None:
        hs = rd.hard_state
        out.append(f"HardState term={hs.term} vote={hs.vote} commit={hs.commit}")
    if rd.snapshot is not None:
        meta = rd.snapshot.meta
        out.append(f"Snapshot {meta.term}/{meta.index} {_conf(meta.conf)}")
    if rd.entries:
        out.append(f"Entries: {describe_entries(rd.entries)}")
    if rd.round_sent is not None:
        out.append(f"RoundSent: {rd.round_sent[0]}:{rd.round_sent[1]}")
    if rd.messages:
        out.append("Messages:")
        out.extend(f"  {describe_message(m)}" for m in rd.messages)
    if rd.persisted_messages:
        out.append("Messages after persisting:")
        out.extend(f"  {describe_message(m)}" for m in rd.persisted_messages)
    if rd.committed_entries:
        out.append(f"Committed: {describe_entries(rd.committed_entries)}")
    if rd.conf_state is not None:
        out.append(f"ConfState: {_conf(rd.conf_state)}")
    if rd.strip_to:
        out.append(f"StripTo: {rd.strip_to}")
    if rd.read_states:
        out.append("ReadStates: " + ", ".join(f"{rs.index}:{rs.context.decode(errors='replace')!r}"
                                               for rs in rd.read_states))
    return out


class Net:
    def __init__(self, voters: list[int], learners: list[int] = (), raft_class: type[Raft] = Raft,
                 witnesses: list[int] = (), **cfg: object) -> None:
        """`cfg`: Config options; `raft_class`: a deliberately altered protocol, to show a test catches it;
        `witnesses`: voters (listed in `voters` too) that hold no data."""
        self.raft_class = raft_class
        self.cfg = cfg
        self.conf = ConfState(frozenset(voters), frozenset(learners), frozenset(witnesses))
        self.nodes: dict[int, SimNode] = {}
        self.queue: list[Message] = []
        self.cut: set[tuple[int, int]] = set()
        self.sent_log: list[Message] = []
        self.trace: list[str] | None = None
        for nid in list(voters) + list(learners):
            self.nodes[nid] = self._new(nid, MemoryStorage(self.conf))

    def _new(self, nid: int, storage: MemoryStorage, applied: int = 0) -> SimNode:
        cfg = Config(id=nid, rng=random.Random(nid), applied=applied, **self.cfg)
        return SimNode(storage, RaftNode(cfg, storage, self.raft_class))

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
        if self.trace is not None:
            self.trace.append(f"> {nid} handling Ready" + (" (its persistence held)" if sn.hold_next else ""))
            self.trace.extend("  " + line for line in describe_ready(rd))
        if sn.hold_next:
            # As a host whose fsync is still running: what may leave before persisting has left.
            sn.hold_next, sn.held = False, rd
            self._send(rd.messages)
            return True
        self._finish(sn, rd, rd.messages + rd.persisted_messages)
        return True

    def persist(self, nid: int) -> None:
        """The held Ready of `nid` became durable: write it, send what waited for that, advance."""
        sn = self.nodes[nid]
        rd = sn.held
        if rd is None:
            raise AssertionError(f"node {nid} holds no Ready")
        sn.held = None
        if self.trace is not None:
            self.trace.append(f"> {nid} persisted its held Ready")
        self._finish(sn, rd, rd.persisted_messages)

    def _send(self, msgs: list[Message]) -> None:
        for m in msgs:
            self.queue.append(m)
            self.sent_log.append(m)

    def _finish(self, sn: SimNode, rd: Ready, msgs: list[Message]) -> None:
        n = sn.node
        if rd.snapshot is not None:
            sn.storage.apply_snapshot(rd.snapshot)
            sn.applied = [Entry(rd.snapshot.meta.term, rd.snapshot.meta.index, EntryType.NORMAL, b"<snapshot>")]
        sn.storage.append(rd.entries)
        if rd.hard_state is not None:
            sn.storage.set_hard_state(rd.hard_state)
        if rd.strip_to:
            sn.storage.strip_payloads(rd.strip_to)
        self._send(msgs)
        sn.applied.extend(rd.committed_entries)
        sn.read_states.extend(rd.read_states)
        if rd.round_sent is not None:
            sn.rounds_sent.append(rd.round_sent)
        n.advance(rd)

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
        receiving = None
        for m in batch:
            lost = (m.frm, m.to) in self.cut or m.to not in self.nodes or (keep is not None and not keep(m))
            if self.trace is not None:
                if lost:
                    self.trace.append(f"> lost: {describe_message(m)}")
                    receiving = None
                else:
                    if receiving != m.to:
                        self.trace.append(f"> {m.to} receiving messages")
                        receiving = m.to
                    self.trace.append(f"  {describe_message(m)}")
            if lost:
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
        """Restart `nid` from its storage (everything it processed was durable: persistence is instant,
        except for a held Ready's, which is lost)."""
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
