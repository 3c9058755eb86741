"""RaftNode: the host's handle on the core (etcd-io/raft's RawNode).

The host feeds it inputs (tick, step, propose, read_index, ...), then collects one `Ready` at a time,
does the I/O it describes, and calls `advance`. The node remembers what the previous Ready already
reported so each Ready carries only what changed.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config
from .errors import ProposalDropped, StepRejected
from .log import RaftLog
from .progress import ProgressState
from .raft import AFTER_PERSIST, Raft
from .rounds import ConfirmedRound
from .storage import LogStorage
from .types import (
    LOCAL_MESSAGES,
    NONE,
    ConfChange,
    ConfState,
    EntryType,
    HardState,
    Message,
    MessageType,
    Ready,
    SoftState,
    StateRole,
)


@dataclass(slots=True, frozen=True)
class ProgressStatus:
    match: int
    next: int
    state: str
    recent_active: bool
    inflight: int
    pending_snapshot: int
    is_learner: bool


@dataclass(slots=True, frozen=True)
class Status:
    id: int
    term: int
    vote: int
    commit: int
    applied: int
    last_index: int
    role: StateRole
    leader: int
    conf: ConfState
    progress: dict[int, ProgressStatus]
    transferee: int


class RaftNode:
    def __init__(self, config: Config, storage: LogStorage, raft_class: type[Raft] = Raft) -> None:
        """`raft_class` lets tests run a deliberately altered protocol (e.g. a broken commit rule) to show
        that the simulator's invariant checks catch it."""
        self.raft = raft_class(config, storage)
        self._prev_soft = self.raft.soft_state()
        self._prev_hard = self.raft.hard_state()
        self._in_flight: Ready | None = None
        self._prev_strip = 0

    # -- identity and views ----------------------------------------------------------------------
    @property
    def id(self) -> int:
        return self.raft.id

    @property
    def term(self) -> int:
        return self.raft.term

    @property
    def role(self) -> StateRole:
        return self.raft.role

    @property
    def leader_id(self) -> int:
        return self.raft.lead

    @property
    def raft_log(self) -> RaftLog:
        return self.raft.log

    @property
    def conf(self) -> ConfState:
        return self.raft.conf

    def conf_as_of(self, index: int) -> ConfState:
        """Membership in force at `index`: what a snapshot taken at applied index `index` must record."""
        return self.raft.confs.as_of(index)

    # -- inputs ----------------------------------------------------------------------------------
    def tick(self) -> None:
        self.raft.tick()

    def campaign(self) -> None:
        self.raft.step(Message(MessageType.HUP))

    def step(self, msg: Message) -> None:
        """A message from a peer. A local-only message type (LOCAL_MESSAGES: what the core makes for itself
        or hears from its host through `campaign`, `tick`, `report_snapshot`, `report_unreachable`) raises
        StepRejected and changes nothing. Messages addressed to another node, and responses from nodes that
        are not members, are dropped silently: both happen in normal operation (membership changes)."""
        if msg.type in LOCAL_MESSAGES:
            raise StepRejected(msg.type, msg.frm)
        if msg.to not in (NONE, self.raft.id):
            return  # meant for another node (e.g. a removed member whose address a new one now uses)
        if msg.type in (MessageType.APP_RESP, MessageType.HEARTBEAT_RESP) and msg.frm not in self.raft.prs:
            return
        self.raft.step(msg)

    def propose(self, data: bytes) -> int:
        return self.raft.propose([data])[0]

    def propose_many(self, datas: list[bytes]) -> tuple[int, int]:
        if not datas:
            raise ValueError("propose_many needs at least one entry")
        return self.raft.propose(datas)

    def propose_conf_change(self, cc: ConfChange) -> int:
        return self.raft.propose_conf_change(cc)

    def read_index(self, context: bytes) -> None:
        self.raft.read_index(context)

    def transfer_leader(self, target: int) -> None:
        if self.raft.role == StateRole.LEADER or self.raft.lead != NONE:
            self.raft.transfer_leader(target)
        else:
            raise ProposalDropped(NONE, "no leader to transfer from")

    def report_unreachable(self, node_id: int) -> None:
        self.raft.step(Message(MessageType.UNREACHABLE, frm=node_id))

    def report_snapshot(self, node_id: int, ok: bool) -> None:
        """The fate of a SNAP message this leader sent `node_id` (etcd-io/raft's ReportSnapshot).

        From sending it until the follower answers or this report comes, the leader sends that follower
        nothing but heartbeats. The follower's answer after installing needs no report: it resumes
        replication by itself, and a report arriving after it is ignored (as is one for a follower not
        waiting on a snapshot, or on a node that does not lead).
        - `ok=False`, the snapshot did not arrive: MUST be reported, or a lost snapshot leaves the
          follower behind for the rest of the term. The leader probes it again from its match index,
          which leads to a new snapshot.
        - `ok=True` may come as soon as the snapshot is handed to a stream that delivers it. The leader
          then probes from after the snapshot, but only once the follower answered or sent a heartbeat
          response; if the snapshot was lost after all, the follower refuses that probe and a new snapshot
          follows. An early ok costs a round trip (at worst a second snapshot), never the follower.
        """
        self.raft.step(Message(MessageType.SNAP_STATUS, frm=node_id, reject=not ok))

    def commit_notice_pending(self) -> int:
        """With `Config.defer_commit_notice`: the number of the commit notice this leader owes its
        followers (it changes with each new one), 0 when none is owed."""
        return self.raft.commit_notice_due

    def send_commit_notice(self) -> None:
        """Send the owed commit notice now (an append, empty if need be, to each follower)."""
        self.raft.send_commit_notice()

    def forget_progress(self, node_id: int) -> None:
        """Drop what the leader knew of `node_id`'s log: its data was replaced (see Raft.forget_progress)."""
        self.raft.forget_progress(node_id)

    # -- outputs ---------------------------------------------------------------------------------
    def has_ready(self) -> bool:
        if self._in_flight is not None:
            return False
        r = self.raft
        log = r.log
        return bool(
            r.soft_state() != self._prev_soft
            or r.hard_state() != self._prev_hard
            or log.unstable.snapshot is not None
            or log.unstable.entries
            or log.has_next_committed_entries()
            or r.msgs
            or r.read_states
            or r.rounds.last > r.rounds.sent
            or r.data_floor > self._prev_strip
        )

    def ready(self) -> Ready:
        if self._in_flight is not None:
            raise RuntimeError("ready() called again before advance()")
        r = self.raft
        log = r.log
        rd = Ready()
        ss = r.soft_state()
        if ss != self._prev_soft:
            rd.soft_state = ss
        hs = r.hard_state()
        if hs != self._prev_hard:
            rd.hard_state = hs
        rd.snapshot = log.unstable.snapshot
        rd.entries = log.unstable_entries()
        rd.committed_entries = log.next_committed_entries()
        if any(e.type == EntryType.CONF_CHANGE for e in rd.committed_entries):
            rd.conf_state = r.confs.as_of(rd.committed_entries[-1].index)
        elif rd.snapshot is not None:
            rd.conf_state = rd.snapshot.meta.conf
        for m in r.msgs:
            (rd.persisted_messages if m.type in AFTER_PERSIST else rd.messages).append(m)
        r.msgs = []
        newest_round = r.rounds.mark_sent()
        if newest_round and r.role == StateRole.LEADER:
            rd.round_sent = (r.term, newest_round)
        rd.read_states = r.read_states
        r.read_states = []
        if r.data_floor > self._prev_strip:
            rd.strip_to = r.data_floor
        self._in_flight = rd
        return rd

    def advance(self, rd: Ready) -> None:
        if rd is not self._in_flight:
            raise RuntimeError("advance() must be given the Ready returned by the last ready()")
        self._in_flight = None
        r = self.raft
        if rd.soft_state is not None:
            self._prev_soft = rd.soft_state
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.strip_to:
            self._prev_strip = max(self._prev_strip, rd.strip_to)
        if rd.snapshot is not None:
            r.log.stable_snap_to(rd.snapshot.meta.index)
            r.log.applied_to(rd.snapshot.meta.index)
        if rd.entries:
            r.on_persisted(rd.entries[-1])
        if rd.committed_entries:
            r.log.applied_to(rd.committed_entries[-1].index)

    # -- inspection ------------------------------------------------------------------------------
    def lease_held(self) -> bool:
        """Leader, committed in its term, no transfer under way: the lease's conditions that need no clock."""
        return self.raft.lease_held()

    def confirmed_round(self) -> ConfirmedRound | None:
        """The newest quorum-confirmed round sent with a trustworthy commit index (leader only)."""
        return self.raft.confirmed_round()

    def is_witness(self) -> bool:
        """This node is a witness in its configuration: it holds the log's indices and terms, no data."""
        return self.raft.is_witness

    def removed_at(self) -> int:
        """Non-zero once a leader told this node it is not in the committed configuration at that index."""
        return self.raft.removed_at

    def departing(self) -> frozenset[int]:
        """On a leader, removed members it is still telling so (the host keeps their connections meanwhile)."""
        return frozenset(self.raft.departing)

    def hard_state(self) -> HardState:
        return self.raft.hard_state()

    def soft_state(self) -> SoftState:
        return self.raft.soft_state()

    def match_indexes(self) -> dict[int, int]:
        """On a leader, each member's match index (its own included); empty otherwise. The cheap part of
        `status()`, for hosts that consult it on every write."""
        r = self.raft
        if r.role != StateRole.LEADER:
            return {}
        return {nid: pr.match for nid, pr in r.prs.items()}

    def status(self) -> Status:
        r = self.raft
        progress: dict[int, ProgressStatus] = {}
        if r.role == StateRole.LEADER:
            for nid, pr in r.prs.items():
                progress[nid] = ProgressStatus(
                    match=pr.match,
                    next=pr.next,
                    state=pr.state.value if isinstance(pr.state, ProgressState) else str(pr.state),
                    recent_active=pr.recent_active,
                    inflight=len(pr.inflights),
                    pending_snapshot=pr.pending_snapshot,
                    is_learner=pr.is_learner,
                )
        return Status(
            id=r.id,
            term=r.term,
            vote=r.vote,
            commit=r.log.committed,
            applied=r.log.applied,
            last_index=r.log.last_index(),
            role=r.role,
            leader=r.lead,
            conf=r.conf,
            progress=progress,
            transferee=r.lead_transferee,
        )
