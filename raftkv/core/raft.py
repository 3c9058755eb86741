"""The Raft protocol as a pure state machine: messages and ticks in, messages and log changes out.

Structured after etcd-io/raft: `step` routes each message by term, then by role. Nothing here performs
I/O, reads a clock or starts a thread; outgoing messages are collected in `msgs` and picked up by
`RaftNode.ready()`. Beyond the paper it implements PreVote and CheckQuorum (Raft thesis §9.6), pipelined
replication with flow control (progress.py), fast log backtracking, ReadIndex and lease reads through
leadership rounds (rounds.py), leadership transfer (thesis §3.10), snapshots and single-server membership
changes (membership.py).
"""

from __future__ import annotations

from collections.abc import Callable

from .config import Config
from .errors import ConfChangeRejected, ProposalDropped
from .log import RaftLog
from .membership import ConfLog
from .progress import Progress, ProgressState
from .quorum import VoteResult, quorum_index, vote_result
from .rounds import ConfirmedRound, PendingRead, Round, Rounds
from .storage import CompactedError, LogStorage, SnapshotTemporarilyUnavailable, UnavailableError
from .types import (
    NONE,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Snapshot,
    SoftState,
    StateRole,
)
from .witness import META_ONLY, data_floor, for_data_node, for_witness, strip_held

MT = MessageType

CAMPAIGN_TRANSFER = b"transfer"
"""Context of VOTE requests caused by a leadership transfer: voters must not ignore them on lease grounds."""

# Messages that promise something about our durable state (a vote, an appended entry, our own term as a
# candidate) must wait until the host has persisted the Ready that produced them.
AFTER_PERSIST = frozenset({MT.APP_RESP, MT.VOTE, MT.VOTE_RESP})


def _round_bytes(n: int) -> bytes:
    return n.to_bytes(8, "big")


def _round_number(ctx: bytes) -> int:
    return int.from_bytes(ctx, "big") if len(ctx) == 8 else 0


class Raft:
    def __init__(self, cfg: Config, storage: LogStorage) -> None:
        cfg.validate()
        self.id = cfg.id
        self.cfg = cfg
        self.rng = cfg.rng
        self.log = RaftLog(storage, cfg.max_committed_size_per_ready)
        hs, snap_conf = storage.initial_state()
        self.term = hs.term
        self.vote = hs.vote
        self.confs = ConfLog(storage.first_index() - 1, snap_conf)
        self.confs.observe(self.log.entries(self.log.first_index()))
        if hs.commit:
            self.log.commit_to(min(hs.commit, self.log.last_index()))
        applied = max(cfg.applied, self.log.first_index() - 1)
        if applied:
            self.log.applied_to(min(applied, self.log.committed))

        self.role = StateRole.FOLLOWER
        self.lead = NONE
        self.prs: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.lead_transferee = NONE
        self.lease_revoked = False
        self.rounds = Rounds()
        self.waiting_reads: list[PendingRead] = []
        self.departing: dict[int, int] = {}  # leader: removed members still to be told, and notices left
        self.removed_at = 0  # index of the committed configuration a leader said we are not in (0: none)
        self.ticks = 0
        self.data_floor = 0  # witness: the highest index a leader said every data voter durably holds
        self.hold_index = 0  # leader: the oldest uncommitted entry (0: none), and the tick it began waiting
        self.hold_since = 0
        # Leader, with deferred commit notices: the number of the notice not yet sent (0: none due).
        self.commit_notice_due = 0
        self.notices_deferred = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = cfg.election_tick
        self._step: Callable[[Message], None] = self._step_follower
        self._sync_progress()
        self.become_follower(self.term, NONE)

    # ------------------------------------------------------------------------------------------
    # Small views
    # ------------------------------------------------------------------------------------------
    @property
    def conf(self) -> ConfState:
        return self.confs.current

    @property
    def is_witness(self) -> bool:
        return self.id in self.conf.witnesses

    def promotable(self) -> bool:
        """Only a voter in our own configuration may campaign, and never one told it was removed."""
        return self.id in self.conf.voters and not self.removed_at

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def soft_state(self) -> SoftState:
        return SoftState(self.lead, self.role)

    def committed_in_term(self) -> bool:
        """Has this leader committed an entry of its own term? Until then its commit index may lag
        behind writes acknowledged by earlier leaders (thesis §6.4)."""
        return self.log.term_or_zero(self.log.committed) == self.term

    def lease_held(self) -> bool:
        """The conditions of a lease that need no clock: we lead, have committed an entry of our term, and
        have not started handing leadership over (a transfer target may be elected despite our lease).
        How long the lease lasts is the host's to measure, from the send time of `confirmed_round()`."""
        return (self.role == StateRole.LEADER and not self.lease_revoked and self.committed_in_term()
                and not self.is_witness)

    def confirmed_round(self) -> ConfirmedRound | None:
        """The newest leadership round of ours that a quorum confirmed and that was sent once our commit
        index was trustworthy; None unless we lead and have one. The host knows when it sent that round,
        and proves from there both the lease and the leader's own staleness bound."""
        if self.role != StateRole.LEADER or self.rounds.proof is None:
            return None
        number, commit = self.rounds.proof
        return ConfirmedRound(self.term, number, commit)

    def send(self, m: Message) -> None:
        if m.frm == NONE:
            m.frm = self.id
        if m.term == 0 and m.type not in (MT.READ_INDEX, MT.TRANSFER_LEADER):
            m.term = self.term
        self.msgs.append(m)

    # ------------------------------------------------------------------------------------------
    # Membership
    # ------------------------------------------------------------------------------------------
    def _sync_progress(self) -> None:
        """Make the progress table match the current configuration (new members start probing)."""
        conf = self.conf
        members = conf.members()
        last = self.log.last_index()
        for nid in list(self.prs):
            if nid not in members:
                del self.prs[nid]
                if self.role == StateRole.LEADER and nid != self.id:
                    self.departing[nid] = self._departing_notices()
        for nid in list(self.departing):
            if nid in members:
                del self.departing[nid]
        if self.removed_at and self.id in members and self.confs.current_index > self.removed_at:
            self.removed_at = 0  # added back by a later configuration
        for nid in members:
            pr = self.prs.get(nid)
            if pr is None:
                pr = Progress(match=0, next=last + 1, max_inflight=self.cfg.max_inflight_msgs)
                if nid == self.id:
                    pr.match = self.log.persisted_last_index()
                self.prs[nid] = pr
            pr.is_learner = nid in conf.learners
        if self.lead_transferee != NONE and self.lead_transferee not in conf.voters:
            self.abort_leader_transfer()

    def forget_progress(self, nid: int) -> None:
        """A member's data was replaced (wiped, or another directory put in its place): what this leader
        knew of its log is void. It starts over as a new follower would, probing from our last index,
        and its old match index no longer counts for anything (commit never moves back)."""
        pr = self.prs.get(nid)
        if pr is None or nid == self.id:
            return
        fresh = Progress(match=0, next=self.log.last_index() + 1, max_inflight=self.cfg.max_inflight_msgs)
        fresh.is_learner = pr.is_learner
        self.prs[nid] = fresh

    def _append_to_log(self, ents: list[Entry]) -> None:
        """Append and keep the configuration in step with the log (append-time membership)."""
        changed = self.confs.truncate_from(ents[0].index)
        self.log.append(ents)
        changed = self.confs.observe(ents) or changed
        if changed:
            self._sync_progress()
            if self.role == StateRole.LEADER:
                # The quorum changed: commit may advance (or a removed voter stops holding it back).
                if self.maybe_commit():
                    self._after_commit()

    def _departing_notices(self) -> int:
        """How many heartbeat intervals a leader keeps telling a removed member: two election timeouts."""
        return max(3, 2 * self.cfg.election_tick // self.cfg.heartbeat_tick)

    def _conf_committed(self) -> bool:
        return self.confs.current_index <= self.log.committed

    def _notify_departing(self) -> None:
        """Tell members removed by a committed change that they are out. Nothing else would reach them: the
        leader stops replicating to a member the moment the change is appended, so a removed follower may
        never receive the entry that removes it, and would campaign forever (and serve stale reads)."""
        if not self._conf_committed():
            return
        for nid in list(self.departing):
            self._tell_removed(nid)
            self.departing[nid] -= 1
            if self.departing[nid] <= 0:
                del self.departing[nid]

    def _tell_removed(self, to: int) -> None:
        self.send(Message(MT.REMOVED, to=to, index=self.confs.current_index))

    def _handle_removed(self, m: Message) -> None:
        """A leader says we are not in its committed configuration at `m.index`. A fact whatever the terms:
        it only ends this node's membership, never touches the log. Ignored if our own log already holds a
        newer configuration that has us (we were added back)."""
        if self.id in self.conf.members() and self.confs.current_index > m.index:
            return
        self.removed_at = max(self.removed_at, m.index)
        if self.role != StateRole.FOLLOWER:
            self.become_follower(self.term, NONE)

    # ------------------------------------------------------------------------------------------
    # Role changes
    # ------------------------------------------------------------------------------------------
    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.cfg.election_tick + self.rng.randrange(self.cfg.election_tick)
        if self.is_witness:
            # Campaign later than any data voter, so that one wins whenever it can.
            self.randomized_election_timeout += self.cfg.election_tick
        self.hold_index = 0
        self.commit_notice_due = 0
        self.abort_leader_transfer()
        self.lease_revoked = False
        self.votes = {}
        self.rounds = Rounds()
        self.waiting_reads = []
        self.departing = {}
        last = self.log.last_index()
        for nid, pr in self.prs.items():
            fresh = Progress(match=0, next=last + 1, max_inflight=self.cfg.max_inflight_msgs,
                             is_learner=pr.is_learner)
            if nid == self.id:
                fresh.match = self.log.persisted_last_index()
            self.prs[nid] = fresh

    def become_follower(self, term: int, lead: int) -> None:
        self._step = self._step_follower
        self._reset(term)
        self.lead = lead
        self.role = StateRole.FOLLOWER

    def become_candidate(self) -> None:
        if self.role == StateRole.LEADER:
            raise AssertionError("leader cannot become candidate")
        self._step = self._step_candidate
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = StateRole.CANDIDATE

    def become_pre_candidate(self) -> None:
        if self.role == StateRole.LEADER:
            raise AssertionError("leader cannot become pre-candidate")
        # A pre-candidate changes neither term nor vote: losing a pre-vote leaves no trace.
        self._step = self._step_candidate
        self.votes = {}
        self.lead = NONE
        self.role = StateRole.PRE_CANDIDATE

    def become_leader(self) -> None:
        if self.role == StateRole.FOLLOWER:
            raise AssertionError("follower cannot become leader without an election")
        self._step = self._step_leader
        self._reset(self.term)
        self.lead = self.id
        self.role = StateRole.LEADER
        self.prs[self.id].become_replicate()
        # An empty entry of our term: committing it commits everything before it (§5.4.2) and marks
        # the point from which ReadIndex, lease reads and membership changes are allowed.
        self.append_entries([b""])

    # ------------------------------------------------------------------------------------------
    # Ticks
    # ------------------------------------------------------------------------------------------
    def tick(self) -> None:
        self.ticks += 1
        if self.role == StateRole.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.step(Message(MT.HUP, frm=self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_tick:
            self.election_elapsed = 0
            if self.cfg.check_quorum and not self._quorum_active():
                self.become_follower(self.term, NONE)
                return
            if self.lead_transferee != NONE:
                # The transfer did not finish within an election timeout: stay leader.
                self.abort_leader_transfer()
        if self.role != StateRole.LEADER:
            return
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self.step(Message(MT.BEAT, frm=self.id))
            if self.departing and self.role == StateRole.LEADER:
                self._notify_departing()
        if self.role == StateRole.LEADER:
            self._track_hold()
            if self._payload_released():
                for nid in self.conf.witnesses:
                    if nid != self.id:
                        self.send_append(nid, send_if_empty=False)
            self._caretaker_handover()

    def _quorum_active(self) -> bool:
        """CheckQuorum: did a majority of voters talk to us during the last election timeout?"""
        active = {nid: 1 for nid, pr in self.prs.items() if pr.recent_active or nid == self.id}
        for nid, pr in self.prs.items():
            if nid != self.id:
                pr.recent_active = False
        return quorum_index(self.conf.voters, active) == 1

    # ------------------------------------------------------------------------------------------
    # Proposals and client-facing requests
    # ------------------------------------------------------------------------------------------
    def append_entries(self, datas: list[bytes], types: list[EntryType] | None = None) -> tuple[int, int]:
        li = self.log.last_index()
        ents = [
            Entry(self.term, li + 1 + i, types[i] if types else EntryType.NORMAL, d) for i, d in enumerate(datas)
        ]
        self._append_to_log(ents)
        self._track_hold()
        return li + 1, li + len(ents)

    def propose(self, datas: list[bytes]) -> tuple[int, int]:
        if self.role != StateRole.LEADER:
            raise ProposalDropped(self.lead, "not the leader")
        if self.is_witness:
            raise ProposalDropped(NONE, "this leader is a witness: it hands leadership to a data voter")
        if self.lead_transferee != NONE:
            raise ProposalDropped(self.lead_transferee, "leadership transfer in progress")
        if self.id not in self.conf.voters:
            raise ProposalDropped(NONE, "leader is being removed from the cluster")
        first, last = self.append_entries(datas)
        self.bcast_append()
        return first, last

    def propose_conf_change(self, cc: ConfChange) -> int:
        if self.role != StateRole.LEADER:
            raise ProposalDropped(self.lead, "not the leader")
        if self.is_witness:
            raise ProposalDropped(NONE, "this leader is a witness: it hands leadership to a data voter")
        if self.lead_transferee != NONE:
            raise ProposalDropped(self.lead_transferee, "leadership transfer in progress")
        if not self.committed_in_term():
            raise ConfChangeRejected("the leader has not yet committed an entry of its term; retry shortly")
        if self.confs.current_index > self.log.committed:
            raise ConfChangeRejected("another membership change is still in progress")
        try:
            self.conf.apply(cc)
        except ValueError as e:
            raise ConfChangeRejected(str(e)) from None
        first, _ = self.append_entries([cc.encode()], [EntryType.CONF_CHANGE])
        self.bcast_append()
        return first

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read point; a ReadState with `context` is produced when it is known."""
        if self.is_witness:
            raise ProposalDropped(self.lead, "a witness holds no data to read")
        if self.role == StateRole.LEADER:
            self._leader_read(PendingRead(0, context, self.id))
        elif self.lead != NONE:
            self.send(Message(MT.READ_INDEX, to=self.lead, context=context))
        else:
            raise ProposalDropped(NONE, "no leader")

    def _leader_read(self, req: PendingRead) -> None:
        if not self.committed_in_term():
            self.waiting_reads.append(req)
            return
        req.index = self.log.committed
        if self.conf.voters == {self.id}:
            self._serve_read(req)
            return
        rnd = self.rounds.unsent()
        if rnd is None or not rnd.commit_valid:
            rnd = self.bcast_heartbeat()
        rnd.reads.append(req)

    def _serve_read(self, req: PendingRead) -> None:
        if req.requester == self.id:
            self.read_states.append(ReadState(req.index, req.context))
        else:
            self.send(Message(MT.READ_INDEX_RESP, to=req.requester, index=req.index, context=req.context))

    def transfer_leader(self, target: int) -> None:
        self.step(Message(MT.TRANSFER_LEADER, index=target))

    # ------------------------------------------------------------------------------------------
    # Elections
    # ------------------------------------------------------------------------------------------
    def hup(self, transfer: bool = False) -> None:
        if self.role == StateRole.LEADER or not self.promotable():
            return
        if self.cfg.pre_vote and not transfer:
            self.campaign(pre=True)
        else:
            self.campaign(pre=False, transfer=transfer)

    def campaign(self, pre: bool, transfer: bool = False) -> None:
        if pre:
            self.become_pre_candidate()
            vote_type, term = MT.PRE_VOTE, self.term + 1
        else:
            self.become_candidate()
            vote_type, term = MT.VOTE, self.term
        if self.poll(self.id, True) == VoteResult.WON:
            # A single voter wins at once.
            if pre:
                self.campaign(pre=False)
            else:
                self.become_leader()
            return
        li, lt = self.log.last_index(), self.log.last_term()
        ctx = CAMPAIGN_TRANSFER if transfer else b""
        for nid in sorted(self.conf.voters):
            if nid != self.id:
                self.send(Message(vote_type, to=nid, term=term, index=li, log_term=lt, context=ctx))

    def poll(self, nid: int, granted: bool) -> VoteResult:
        self.votes.setdefault(nid, granted)
        return vote_result(self.conf.voters, self.votes)

    # ------------------------------------------------------------------------------------------
    # Step: term checks common to all roles, then the role's own handler
    # ------------------------------------------------------------------------------------------
    def step(self, m: Message) -> None:
        if m.type == MT.REMOVED:
            self._handle_removed(m)
            return
        if (self.role == StateRole.LEADER and m.term != 0 and m.frm not in (NONE, self.id)
                and m.frm not in self.conf.members() and self._conf_committed()):
            # A node outside our committed configuration is talking to us (typically a removed member,
            # back from a partition or a restart, campaigning): tell it. Its message then goes on as
            # before: a non-member's vote and answers count for nothing.
            self._tell_removed(m.frm)
        if m.term == 0:
            pass  # local message
        elif m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE):
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self.cfg.check_quorum and self.lead != NONE and self.election_elapsed < self.cfg.election_tick
                )
                if in_lease and not force:
                    # We heard from a live leader within the election timeout: a node returning from a
                    # partition must not disrupt it (thesis §4.2.3). Neither adopt the term nor vote.
                    return
            if m.type == MT.PRE_VOTE:
                pass  # a pre-vote never changes our term
            elif m.type == MT.PRE_VOTE_RESP and not m.reject:
                pass  # granted pre-votes carry the term the candidate *will* use
            elif m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
                self.become_follower(m.term, m.frm)
            else:
                self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and m.type in (MT.HEARTBEAT, MT.APP):
                # A stale leader (e.g. back from a partition). Answer so it learns our term and steps
                # down; otherwise, with PreVote on, it could keep the cluster from electing anyone.
                self.send(Message(MT.APP_RESP, to=m.frm))
            elif m.type == MT.PRE_VOTE:
                self.send(Message(MT.PRE_VOTE_RESP, to=m.frm, reject=True))
            return

        if m.type == MT.HUP:
            self.hup()
        elif m.type in (MT.VOTE, MT.PRE_VOTE):
            can_vote = (
                self.vote == m.frm
                or (self.vote == NONE and self.lead == NONE)
                or (m.type == MT.PRE_VOTE and m.term > self.term)
            )
            resp = MT.VOTE_RESP if m.type == MT.VOTE else MT.PRE_VOTE_RESP
            if can_vote and self.log.is_up_to_date(m.index, m.log_term):
                # Answer with the term of the request: for a pre-vote that is a future term.
                self.send(Message(resp, to=m.frm, term=m.term))
                if m.type == MT.VOTE:
                    self.election_elapsed = 0
                    self.vote = m.frm
            else:
                self.send(Message(resp, to=m.frm, term=self.term, reject=True))
        else:
            self._step(m)

    # -- leader ----------------------------------------------------------------------------------
    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == MT.BEAT:
            self.bcast_heartbeat()
            return
        if t == MT.READ_INDEX:
            if m.frm in self.prs:
                self._leader_read(PendingRead(0, m.context, m.frm))
            return
        if t == MT.TRANSFER_LEADER:
            self._handle_transfer(m.index)
            return
        pr = self.prs.get(m.frm)
        if pr is None:
            return
        if t == MT.APP_RESP:
            self._handle_append_response(m, pr)
        elif t == MT.HEARTBEAT_RESP:
            self._handle_heartbeat_response(m, pr)
        elif t == MT.SNAP_STATUS:
            if pr.state != ProgressState.SNAPSHOT:
                return
            if m.reject:
                pr.pending_snapshot = 0
            pr.become_probe()
            # Wait for the follower's answer (or a heartbeat response) before probing again.
            pr.probe_sent = not m.reject
        elif t == MT.UNREACHABLE:
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        if m.reject:
            hint = m.reject_hint
            if m.log_term > 0:
                hint, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, hint):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self.send_append(m.frm)
            return
        old_paused = pr.is_paused()
        floor_before = self._data_floor() if self.conf.witnesses else 0
        if not pr.maybe_update(m.index):
            return
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT and pr.match + 1 >= self.log.first_index():
            pr.become_probe()
            pr.become_replicate()
        elif pr.state == ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        if self.maybe_commit():
            self._after_commit()
            self._tell_commit()
        elif old_paused:
            self.send_append(m.frm)
        # Fill the pipeline window with whatever else is waiting.
        while self.prs.get(m.frm) is pr and self.send_append(m.frm, send_if_empty=False):
            pass
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self.send(Message(MT.TIMEOUT_NOW, to=m.frm))
        if self.conf.witnesses and self._data_floor() > floor_before:
            for nid in self.conf.witnesses:
                if nid != self.id and nid != m.frm:
                    self.send_append(nid, send_if_empty=False)
        self._caretaker_handover()

    def _handle_heartbeat_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        pr.probe_sent = False
        if pr.state == ProgressState.REPLICATE and pr.inflights.full():
            pr.inflights.free_first_one()
        if pr.match < self._send_limit(m.frm):
            self.send_append(m.frm)
        rnd = _round_number(m.context)
        if rnd and not pr.is_learner:
            for confirmed in self.rounds.ack(m.frm, rnd, self.id, self.conf.voters):
                self._round_confirmed(confirmed)

    def _round_confirmed(self, rnd: Round) -> None:
        for req in rnd.reads:
            self._serve_read(req)

    def _handle_transfer(self, target: int) -> None:
        if target not in self.conf.voters or target in self.conf.witnesses:
            return  # learners, witnesses and strangers cannot lead
        if self.lead_transferee != NONE:
            if self.lead_transferee == target:
                return
            self.abort_leader_transfer()
        if target == self.id:
            return
        # The transfer must finish within one election timeout, or it is abandoned.
        self.election_elapsed = 0
        self.lead_transferee = target
        # Once the target may campaign with our blessing, followers will vote for it despite our lease.
        self.lease_revoked = True
        if self.prs[target].match == self.log.last_index():
            self.send(Message(MT.TIMEOUT_NOW, to=target))
        else:
            self.send_append(target)

    def abort_leader_transfer(self) -> None:
        self.lead_transferee = NONE

    def maybe_commit(self) -> bool:
        """Advance the commit index to what a majority of voters durably hold -- but only through an entry
        of the current term (Raft §5.4.2, the paper's Figure 8). Kept as one method so the simulator's
        tests can substitute a broken rule and watch it being caught."""
        mci = quorum_index(self.conf.voters, {nid: pr.match for nid, pr in self.prs.items()})
        if self.log.maybe_commit(mci, self.term):
            self._track_hold()
            return True
        return False

    # -- witnesses (witness.py) ------------------------------------------------------------------
    def _data_floor(self) -> int:
        """Leader: the highest index every data voter durably holds."""
        return data_floor(self.conf, {nid: pr.match for nid, pr in self.prs.items()})

    def _track_hold(self) -> None:
        """Leader: note since when the oldest uncommitted entry has been waiting (in ticks)."""
        if self.log.committed >= self.log.last_index():
            self.hold_index = 0
        elif self.hold_index <= self.log.committed:
            self.hold_index = self.log.committed + 1
            self.hold_since = self.ticks

    def _payload_released(self) -> bool:
        """Leader: has the oldest uncommitted entry waited long enough to be sent to witnesses whole?"""
        return bool(self.hold_index) and self.ticks - self.hold_since >= self.cfg.witness_payload_after_ticks

    def _send_limit(self, to: int) -> int:
        """The last index we would send `to` now: a witness gets entries beyond the data floor only once
        they are released."""
        if to in self.conf.witnesses and not self._payload_released():
            return min(self.log.last_index(), self._data_floor())
        return self.log.last_index()

    def _caretaker_handover(self) -> None:
        """A witness that leads hands over to the first data voter holding its whole log (thesis §3.10)."""
        if self.role != StateRole.LEADER or not self.is_witness or self.lead_transferee != NONE:
            return
        last = self.log.last_index()
        for nid in sorted(self.conf.data_voters()):
            pr = self.prs.get(nid)
            if pr is not None and pr.match == last:
                self._handle_transfer(nid)
                return

    def _holds_data_after(self, ents: list[Entry]) -> bool:
        """Would we be a data member once `ents` are in our log? (A node joining as a witness learns that
        it is one from the log it is being sent: until then it is no member, and holds no data.)"""
        conf = self.conf
        for e in ents:
            if e.type == EntryType.CONF_CHANGE:
                try:
                    conf = conf.apply(ConfChange.decode(e.data))
                except ValueError:
                    pass
        return self.id in conf.members() and self.id not in conf.witnesses

    def _learn_floor(self, floor: int) -> None:
        """Witness: a leader says every data voter durably holds our log up to `floor`."""
        if not self.is_witness or floor <= self.data_floor:
            return
        self.data_floor = floor
        strip_held(self.log.unstable.entries, floor)

    def _after_commit(self) -> None:
        """Work that waits for the commit index to move."""
        if self.waiting_reads and self.committed_in_term():
            reads, self.waiting_reads = self.waiting_reads, []
            for req in reads:
                self._leader_read(req)
        if self.id not in self.conf.voters and self.log.committed >= self.confs.current_index:
            # Our own removal is committed: hand over by stepping down (thesis §4.2.2).
            self.become_follower(self.term, NONE)

    # -- candidate -------------------------------------------------------------------------------
    def _step_candidate(self, m: Message) -> None:
        t = m.type
        my_resp = MT.PRE_VOTE_RESP if self.role == StateRole.PRE_CANDIDATE else MT.VOTE_RESP
        if t == MT.APP:
            self.become_follower(m.term, m.frm)
            self._handle_append(m)
        elif t == MT.HEARTBEAT:
            self.become_follower(m.term, m.frm)
            self._handle_heartbeat(m)
        elif t == MT.SNAP:
            self.become_follower(m.term, m.frm)
            self._handle_snapshot(m)
        elif t == my_resp:
            res = self.poll(m.frm, not m.reject)
            if res == VoteResult.WON:
                if self.role == StateRole.PRE_CANDIDATE:
                    self.campaign(pre=False)
                else:
                    self.become_leader()
                    self.bcast_append()
            elif res == VoteResult.LOST:
                self.become_follower(self.term, NONE)

    # -- follower --------------------------------------------------------------------------------
    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == MT.APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append(m)
        elif t == MT.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_heartbeat(m)
        elif t == MT.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_snapshot(m)
        elif t == MT.TRANSFER_LEADER:
            # Only our own host's request is forwarded; one already forwarded is not passed on again.
            if self.lead != NONE and m.frm in (NONE, self.id):
                self.send(Message(MT.TRANSFER_LEADER, to=self.lead, index=m.index))
        elif t == MT.TIMEOUT_NOW:
            self.hup(transfer=True)
        elif t == MT.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self.send(Message(MT.APP_RESP, to=m.frm, index=self.log.committed))
            return
        if not self.log.match_term(m.index, m.log_term):
            hint_index = min(m.index, self.log.last_index())
            hint_index, hint_term = self.log.find_conflict_by_term(hint_index, m.log_term)
            self.send(Message(MT.APP_RESP, to=m.frm, index=m.index, reject=True, reject_hint=hint_index,
                              log_term=hint_term))
            return
        ents = m.entries
        if for_data_node(ents) is not ents and self._holds_data_after(ents):
            # A payload-less entry meant for a witness: a data node must never hold one. Drop what
            # follows it; the leader sends the rest again.
            ents = for_data_node(ents)
        ci = self.log.find_conflict(ents)
        if ci:
            self._append_to_log(ents[ci - (m.index + 1):])
        last_new = m.index + len(ents)
        self.log.commit_to(min(m.commit, last_new))
        self._learn_floor(min(m.data_floor, last_new))
        self.send(Message(MT.APP_RESP, to=m.frm, index=last_new))

    def _handle_heartbeat(self, m: Message) -> None:
        # The leader sends min(our match, its commit), so this never points past what we hold.
        self.log.commit_to(min(m.commit, self.log.last_index()))
        self._learn_floor(min(m.data_floor, self.log.last_index()))
        self.send(Message(MT.HEARTBEAT_RESP, to=m.frm, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        if snap is None:
            return
        if self._restore(snap):
            self.send(Message(MT.APP_RESP, to=m.frm, index=self.log.last_index()))
        else:
            self.send(Message(MT.APP_RESP, to=m.frm, index=self.log.committed))

    def _restore(self, snap: Snapshot) -> bool:
        meta = snap.meta
        if meta.index <= self.log.committed:
            return False
        if self.role != StateRole.FOLLOWER:
            # Defence in depth: only a follower installs a snapshot.
            self.become_follower(self.term + 1, NONE)
            return False
        # No check that we are in the snapshot's membership: a node removed and later added back can be
        # sent a snapshot taken while it was out; the entries after the snapshot add it back.
        if self.log.match_term(meta.index, meta.term):
            # We already hold everything the snapshot covers: just learn that it is committed.
            self.log.commit_to(meta.index)
            return False
        self.log.restore(snap)
        self.confs.reset(meta.index, meta.conf)
        self._sync_progress()
        return True

    # ------------------------------------------------------------------------------------------
    # Sending
    # ------------------------------------------------------------------------------------------
    def send_append(self, to: int, send_if_empty: bool = True) -> bool:
        """Send `to` the entries it lacks (or a snapshot if they are compacted). False if nothing was sent."""
        pr = self.prs.get(to)
        if pr is None or pr.is_paused():
            return False
        prev_index = pr.next - 1
        try:
            prev_term = self.log.term(prev_index)
            ents = self.log.entries(pr.next, None, self.cfg.max_size_per_msg)
        except (CompactedError, UnavailableError):
            return self._send_snapshot(to, pr)
        floor = 0
        if to in self.conf.witnesses:
            floor = self._data_floor()
            ents = for_witness(ents, floor, self._send_limit(to))
            floor = min(floor, prev_index + len(ents))
        elif self.is_witness:
            ents = for_data_node(ents)
        if not ents and not send_if_empty:
            return False
        m = Message(MT.APP, to=to, index=prev_index, log_term=prev_term, entries=ents, commit=self.log.committed,
                    data_floor=floor)
        pr.sent_entries(ents[-1].index if ents else None)
        self.send(m)
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # do not ship a snapshot to a follower that may well be down
        if self.is_witness and to not in self.conf.witnesses:
            return False  # a witness has no data to give a data node
        try:
            snap = self.log.snapshot()
        except SnapshotTemporarilyUnavailable:
            return False
        if snap.meta.index == 0:
            return False
        if to in self.conf.witnesses:
            snap = Snapshot(snap.meta, META_ONLY)  # a witness takes the snapshot's place in the log only
        pr.become_snapshot(snap.meta.index)
        self.send(Message(MT.SNAP, to=to, snapshot=snap, context=META_ONLY if to in self.conf.witnesses else b""))
        return True

    def bcast_append(self) -> None:
        for nid in self.prs:
            if nid != self.id:
                self.send_append(nid)
        self.commit_notice_due = 0  # every append carries the commit index

    def _tell_commit(self) -> None:
        """The commit index moved: tell the followers now (an empty append to each), or, when the host
        defers commit notices, leave it to the next append or heartbeat or to `send_commit_notice`."""
        if not self.cfg.defer_commit_notice:
            self.bcast_append()
        elif not self.commit_notice_due:
            self.notices_deferred += 1
            self.commit_notice_due = self.notices_deferred

    def send_commit_notice(self) -> None:
        """Leader: tell every follower the commit index a deferred notice has not told yet."""
        if self.role == StateRole.LEADER and self.commit_notice_due:
            self.bcast_append()

    def bcast_heartbeat(self) -> Round:
        """Open a new leadership round and send it to every member."""
        rnd = self.rounds.open(self.log.committed, self.committed_in_term())
        ctx = _round_bytes(rnd.number)
        for nid, pr in self.prs.items():
            if nid == self.id:
                continue
            floor = min(pr.match, self._data_floor()) if nid in self.conf.witnesses else 0
            self.send(Message(MT.HEARTBEAT, to=nid, commit=min(pr.match, self.log.committed), context=ctx,
                              data_floor=floor))
        if self.conf.voters == {self.id}:
            for confirmed in self.rounds.confirm_alone():
                self._round_confirmed(confirmed)
        return rnd

    # ------------------------------------------------------------------------------------------
    # Host feedback
    # ------------------------------------------------------------------------------------------
    def on_persisted(self, last: Entry | None) -> None:
        """The host made entries through `last` durable. A leader counts itself only now, so nothing is
        committed on the strength of an entry that exists only in a leader's memory."""
        if last is None:
            return
        if not self.log.stable_to(last.index, last.term):
            return
        me = self.prs.get(self.id)  # absent while a leader replicates its own removal
        if self.role == StateRole.LEADER and me is not None:
            if me.maybe_update(last.index) and self.maybe_commit():
                self._after_commit()
                self._tell_commit()

