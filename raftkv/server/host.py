"""NodeHost: the one asyncio loop that drives a node.

The loop waits for something to happen (a peer message, a client request, a tick), steps everything that
arrived into the core at once, then works through the core's Ready: send what can go now, apply committed
entries into the store's write-back buffer and answer their writers, persist what must be durable (one
synced commit, on the I/O thread, which also takes the buffer to LMDB), send what had to wait for
durability, advance. Whatever arrives while an fsync is in progress is taken in the next round, so one
fsync covers many writes (group commit) and one quorum round covers many reads. A write costs one fsync,
its append; the buffer is flushed by the next Ready's commit, or on its own within
FLUSH_MAX_SECONDS / FLUSH_MAX_ENTRIES (DESIGN.md §4).

Client-facing work never touches the core directly: services call `write`, `read_barrier`, `change_member`
and friends, which queue the request and wake the loop. The loop is the only code that calls the core.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from ..core import (
    NONE,
    ConfChange,
    ConfChangeRejected,
    Config,
    Entry,
    Message,
    MessageType,
    ProposalDropped,
    RaftNode,
    Ready,
    StateRole,
)
from ..layers.acks import (
    AckLevel,
    AckOutcome,
    AckRequest,
    DurabilityWaiters,
    SemiSyncStatus,
    check_meetable,
    confirmed_members,
)
from ..layers.lag import FollowerLag, LagMonitor, LagThresholds
from ..layers.reads import StalenessProof, prove_staleness
from ..storage.errors import is_nospace, is_storage_fault
from ..transport.inbox import Inbox
from .config import ServerConfig
from .errors import (
    LeadershipLost,
    NoSpace,
    NotLeader,
    OutcomeUnknown,
    ProposalLost,
    ShuttingDown,
    SyncTimeout,
)
from .identity import IdentityGuard
from .lease_clock import LeaseClock, lease_seconds
from .members import MemberInfo, MemberRegistry
from .metrics import Metrics
from .ports import Clock, IOExecutor, PeerTransport, SystemClock, ThreadIO
from .reconfig_check import ClusterView, MemberHealth, check_change, check_transfer
from .removal import Removal
from .store import NodeStore
from .transfer_guard import DATED, TransferGuard

log = structlog.get_logger("raftkv.host")

RESPONSES = (MessageType.APP_RESP, MessageType.HEARTBEAT_RESP)
SNAPSHOT_RETRY_SECONDS = 10.0
LOG_SIZE_CHECK_EVERY = 64
NOSPACE_RETRY_SECONDS = 1.0
"""How often a Ready whose persist failed for lack of space is tried again."""

class _Stopping(Exception):
    """The node is stopping while a Ready waits for space: the loop ends without persisting it."""


@dataclass(slots=True)
class WriteOutcome:
    index: int
    term: int
    result: Any
    ack: AckOutcome
    latency_s: float


@dataclass(slots=True)
class _Proposal:
    datas: list[bytes]  # proposed together, at consecutive indexes
    placed: asyncio.Future[tuple[int, int]]  # (first index, term)
    # One per entry, registered as apply waiters the moment the entries get their indexes: registered any
    # later, an entry committed and applied within the same loop iteration (a one-node cluster) would
    # find nobody waiting. None: the writer does not wait for the apply.
    applied: list[asyncio.Future[Any]] | None = None


@dataclass(slots=True)
class _ConfRequest:
    change: ConfChange
    placed: asyncio.Future[tuple[int, int]]
    applied: asyncio.Future[Any]  # registered at placement, as for _Proposal


@dataclass(order=True, slots=True)
class _IndexWaiter:
    index: int
    seq: int
    future: asyncio.Future[None] = field(compare=False)


class NodeHost:
    def __init__(self, cfg: ServerConfig, store: NodeStore, transport: PeerTransport, metrics: Metrics,
                 seed: int | None = None, *, clock: Clock | None = None, io: IOExecutor | None = None,
                 inbox: Inbox | None = None, identity: IdentityGuard | None = None) -> None:
        """Everything the host touches comes from outside (ports.py): its store, its transport and the
        inbox it pulls peers' messages from (the transport's, unless given), its clock, and the executor
        its synced transactions run on. Left out, the clock is the system's and the executor a thread."""
        import random

        self.cfg = cfg
        self.store = store
        self.transport = transport
        self.metrics = metrics
        self.clock: Clock = clock or SystemClock()
        self.io: IOExecutor = io or ThreadIO(cfg.id)
        own = getattr(transport, "inbox", None)
        self.inbox: Inbox = inbox or (own if isinstance(own, Inbox) else Inbox())
        self.members = MemberRegistry(store)
        core_cfg = Config(
            id=cfg.id,
            election_tick=cfg.election_ticks,
            heartbeat_tick=cfg.heartbeat_ticks,
            applied=store.applied_index(),
            rng=random.Random(seed if seed is not None else cfg.id * 7919 + time.monotonic_ns()),
        )
        self.node = RaftNode(core_cfg, store.log)
        # When each round of heartbeats left, on our monotonic clock: leases and our own staleness proof.
        self.lease_clock = LeaseClock(lease_seconds(cfg.tick_ms, cfg.election_ticks, cfg.lease_drift_ticks))
        # A leader-transfer request that reaches us later than the leader waits for it is dropped.
        self.transfer_guard = TransferGuard(cfg.election_ticks * cfg.tick_ms / 1000)
        self.lag = LagMonitor(LagThresholds(cfg.lag_critical_entries, cfg.lag_critical_seconds))
        self.durability = DurabilityWaiters()
        self.semi_sync = SemiSyncStatus()
        self._snapshot_task: asyncio.Task[int] | None = None
        self._snapshot_retry_at = 0.0
        self._log_size_checked_at = 0
        self._wake = asyncio.Event()
        self.inbox.set_consumer(self._wake.set, self._admit)
        self._proposals: deque[_Proposal] = deque()
        self._conf_requests: deque[_ConfRequest] = deque()
        self._reads: list[asyncio.Future[int]] = []
        self._read_batches: dict[bytes, list[asyncio.Future[int]]] = {}
        self._read_seq = itertools.count(1)
        self._apply_waiters: dict[int, tuple[int, asyncio.Future[Any]]] = {}
        self._persist_waiters: dict[int, tuple[int, asyncio.Future[None]]] = {}
        self._applied_heap: list[_IndexWaiter] = []
        self._heap_seq = itertools.count()
        self._local_ops: deque[Callable[[], None]] = deque()
        # Streamed snapshots handed to the core, by their data (a token naming the staged file): stepped
        # (answered once their Ready is written, or when the core did not take them).
        self._snapshots_stepped: list[tuple[bytes, asyncio.Future[bool]]] = []
        self._ticks_due = 0
        self._tick_handle: asyncio.TimerHandle | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._persisted_index = store.log.last_index()
        self.applied = store.applied_index()
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flush_waiters: list[asyncio.Future[None]] = []
        self._in_ready = False
        self.leader_changes = 0
        self._last_leader = NONE
        self._last_lag_check = 0.0
        self._known_commit = 0
        self.read_rounds = 0  # ReadIndex requests issued to the core (batches, not individual reads)
        self._round_started = 0.0
        # A round not answered within an election timeout is not waited for: CheckQuorum or a new leader
        # will settle it, and reads that came later should not stall behind it.
        self._round_patience = cfg.election_ticks * cfg.tick_ms / 1000
        self.reads_served = 0
        self.nospace = ""
        """The persist error that raised the NOSPACE alarm; "" while there is none."""
        self.fatal: BaseException | None = None
        """Why the host loop stopped, if it did; `failed` is set then and the process must stop."""
        self.failed = asyncio.Event()
        metrics.alarm.labels("nospace").set(0)
        self.removal = Removal(cfg.id, cfg.data_dir)
        self._lingering_peers = False  # transport peers kept for removed members still being told
        self.identity: IdentityGuard | None = identity
        """Peer identity and the member identity records (given by the process lifecycle; see identity.py)."""
        if identity is not None:
            identity.bind(self)

    # ------------------------------------------------------------------------------------------
    # Lifecycle
    # ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.members.load(self.cfg.peers)
        for nid, info in self.members.all().items():
            if nid != self.cfg.id and info.address:
                self.transport.add_peer(nid, info.address)
        loop = asyncio.get_running_loop()
        self._schedule_tick(loop)
        self._loop_task = asyncio.create_task(self._run(), name=f"raftkv-host-{self.cfg.id}")
        log.info("node started", id=self.cfg.id, applied=self.applied, last_index=self.store.log.last_index(),
                 term=self.node.term, members=sorted(self.members.all()))
        conf = self.node.conf
        if not self.cfg.join and conf.voters and self.cfg.id not in conf.members():
            self._on_removed(f"its log ends with a configuration without it: {sorted(conf.members())}")

    async def stop(self) -> None:
        self._stopping = True
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self._wake.set()
        if self._loop_task is not None:
            try:
                await asyncio.wait_for(self._loop_task, 5)
            except (TimeoutError, asyncio.CancelledError):
                self._loop_task.cancel()
        self._fail_everything(ShuttingDown("node is shutting down"))
        self._snapshots_stepped += [(a.msg.snapshot.data, a.installed) for a in self.inbox.take_snapshots()
                                    if a.msg.snapshot is not None]
        self._settle_snapshots(None)
        if self._snapshot_task is not None and not self._snapshot_task.done():
            self._snapshot_task.cancel()
            await asyncio.gather(self._snapshot_task, return_exceptions=True)
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        if self.fatal is None and not self.nospace and not self._in_ready:
            # A clean stop leaves nothing to re-apply (a crash would: the log has it all). Not if the
            # loop stopped inside a Ready: its entries may be applied and not appended yet.
            try:
                await self.io.run(self.store.flush)
            except Exception as e:  # noqa: BLE001 - the log still holds every entry; replayed on start
                log.warning("could not flush the write-back buffer on stop; it is re-applied on start",
                            error=str(e))
        self.io.shutdown()

    def _schedule_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        def fire() -> None:
            self._ticks_due += 1
            self._wake.set()
            if not self._stopping:
                self._tick_handle = loop.call_later(self.cfg.tick_ms / 1000, fire)

        self._tick_handle = loop.call_later(self.cfg.tick_ms / 1000, fire)

    # ------------------------------------------------------------------------------------------
    # Inputs from the transport
    # ------------------------------------------------------------------------------------------
    def deliver(self, msg: Message) -> None:
        """A message from a peer, put in the inbox as the transport does (tests and tools)."""
        self.inbox.message(msg)

    def deliver_snapshot(self, msg: Message) -> asyncio.Future[bool]:
        """A snapshot message whose records were received and staged: stepped like any message. The
        future says when it is installed (True), or that the core did not need it (False: this node held
        everything it covers already), so the sender learns the truth (see `snapshot_status`)."""
        assert msg.snapshot is not None
        return self.inbox.snapshot(msg)

    def _admit(self, msg: Message) -> bool:
        """Whether a message arriving in the inbox is kept: a leader-transfer request that reached us
        later than its leader waits for it is dropped (transfer_guard.py), dated as it arrives."""
        late = self.transfer_guard.check(msg, self.clock.monotonic_ns())
        if late is None:
            return True
        log.warning("ignored a stale leader-transfer request", leader=msg.frm, term=msg.term,
                    late_ms=round(late * 1000),
                    detail="it arrived after the leader had given up the transfer; no election is started")
        return False

    def _take_reports(self) -> None:
        """The transport's word about peers, from the inbox: unreachable, a snapshot's fate, a refusal."""
        reports = self.inbox.reports
        while reports:
            r = reports.popleft()
            if r.kind == "unreachable":
                self.node.report_unreachable(r.peer)
            elif r.kind == "snapshot":
                # True once the follower answered that it installed it (or needed none); False when the
                # stream failed, so the core sends another.
                self.node.report_snapshot(r.peer, r.ok)
            elif r.kind == "refused":
                self.peer_refused(r.peer, r.reason)

    def snapshot_status(self, node_id: int, ok: bool) -> None:
        """The transport's word on a snapshot sent to `node_id` (as the inbox carries it)."""
        self.inbox.snapshot_status(node_id, ok)

    def _settle_snapshots(self, installed: bytes | None) -> None:
        """Answer the stepped snapshot messages: the one whose Ready was just written (`installed`), or, at
        the end of a round, every one left (the core did not take them)."""
        left = []
        for data, fut in self._snapshots_stepped:
            if installed is None or data == installed:
                if not fut.done():
                    fut.set_result(installed is not None)
            else:
                left.append((data, fut))
        self._snapshots_stepped = left

    def peer_unreachable(self, node_id: int) -> None:
        self.inbox.unreachable(node_id)

    def run_in_loop(self, op: Callable[[], None]) -> None:
        """Run `op` in the loop between Readys, where the core may be called."""
        self._local_ops.append(op)
        self._wake.set()

    def forget_member_progress(self, node_id: int) -> None:
        """A member's data was replaced: drop what this leader knew of its log and of its lag."""
        self.node.forget_progress(node_id)
        self.forget_member_lag(node_id)

    def forget_member_lag(self, node_id: int) -> None:
        """Drop what was heard from a member (applied index, last contact): it was removed, re-added or
        replaced, and what its previous self said no longer holds."""
        self.lag.applied.pop(node_id, None)
        self.lag.last_contact.pop(node_id, None)

    # ------------------------------------------------------------------------------------------
    # Views for services
    # ------------------------------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return self.node.role == StateRole.LEADER

    @property
    def leader_id(self) -> int:
        return self.node.leader_id

    def leader_address(self) -> str:
        info = self.members.get(self.node.leader_id)
        return info.address if info else ""

    def not_leader(self) -> NotLeader:
        return NotLeader(self.node.leader_id, self.leader_address())

    def staleness_proof(self) -> StalenessProof:
        """The bound on the age of this node's state that it can prove now, on its own clock. A leader
        measures from the send time of its newest quorum-confirmed round (with or without --lease-reads),
        a follower from the stamp its leader last echoed."""
        now = self.clock.monotonic_ns()
        if self.is_leader:
            return self.lease_clock.proof(self.node.confirmed_round(), self.applied, now)
        return prove_staleness(self.node.freshness(), self.applied, now)

    def lease_valid(self) -> bool:
        """May a `lease` read be answered from this node's state now (see lease_clock.py)?"""
        if not (self.cfg.lease_reads and self.node.lease_held()):
            return False
        return self.lease_clock.lease_valid(self.node.confirmed_round(), self.applied, self.clock.monotonic_ns())

    def follower_lags(self) -> list[FollowerLag]:
        if not self.is_leader:
            return []
        lags, _ = self._compute_lag(self.clock.monotonic())
        return lags

    def match_indexes(self) -> dict[int, int]:
        """Who durably holds what: followers' match, and our own persisted index."""
        match = self.node.match_indexes()
        match[self.cfg.id] = self._persisted_index
        return match

    # ------------------------------------------------------------------------------------------
    # Writes
    # ------------------------------------------------------------------------------------------
    async def write(self, data: bytes, ack: AckRequest, needs_result: bool = True) -> WriteOutcome:
        """Propose `data` and wait as `ack` asks. Raises NotLeader, ProposalLost, SyncTimeout, NoSpace."""
        self._refuse_writes_without_space()
        if not self.is_leader:
            raise self.not_leader()
        if ack.level == AckLevel.SEMI_SYNC:
            check_meetable(ack, self.members.semi_sync_set(self.node.conf, self.cfg.id))
        started = self.clock.monotonic()
        loop = asyncio.get_running_loop()
        placed: asyncio.Future[tuple[int, int]] = loop.create_future()
        level = ack.level
        persist_only = level == AckLevel.LEADER and not needs_result
        applied = None if persist_only else [loop.create_future()]
        self._proposals.append(_Proposal([data], placed, applied))
        self._wake.set()
        index, term = await placed
        if applied is None:
            fut: asyncio.Future[None] = loop.create_future()
            if self._persisted_index >= index:
                fut.set_result(None)
            else:
                self._persist_waiters[index] = (term, fut)
            await fut
            return WriteOutcome(index, term, None, AckOutcome(AckLevel.LEADER, False, [self.cfg.id]),
                                self.clock.monotonic() - started)
        result = await applied[0]
        if level in (AckLevel.LEADER, AckLevel.MAJORITY):
            # A leader-level write whose result is needed (a transaction) is answered after commit.
            outcome = AckOutcome(AckLevel.MAJORITY, False, confirmed_members(index, self.match_indexes()))
            return WriteOutcome(index, term, result, outcome, self.clock.monotonic() - started)
        outcome = await self._await_durable(index, ack)
        if outcome.timed_out:
            raise SyncTimeout(index, term, outcome.confirmed_by)
        if level == AckLevel.SEMI_SYNC:
            self._note_semi_sync(index, ack, outcome)
        return WriteOutcome(index, term, result, outcome, self.clock.monotonic() - started)

    async def write_many(self, datas: list[bytes]) -> list[WriteOutcome | BaseException]:
        """Majority writes proposed together, in order, answered each on its own once applied.

        The same as `write(data, AckRequest(MAJORITY))` for each, without a task and a placement future per
        write: the KV.Batch path sends hundreds of writes per call, and per-write asyncio objects were a
        visible share of the leader's CPU. Raises NotLeader (for all of them) when not the leader."""
        self._refuse_writes_without_space()
        if not self.is_leader:
            raise self.not_leader()
        started = self.clock.monotonic()
        loop = asyncio.get_running_loop()
        placed: asyncio.Future[tuple[int, int]] = loop.create_future()
        applied = [loop.create_future() for _ in datas]
        self._proposals.append(_Proposal(datas, placed, applied))
        self._wake.set()
        first, term = await placed
        # Entries are answered in index order, so when the last is answered all are: waiting on it alone
        # saves the loop iterations a gather over hundreds of futures takes to report.
        try:
            await applied[-1]
        except Exception:  # noqa: BLE001 - each entry's outcome is read below
            pass
        if not all(f.done() for f in applied):
            await asyncio.wait(applied)
        results = [f.exception() or f.result() for f in applied]
        match = self.match_indexes()
        latency = self.clock.monotonic() - started
        return [r if isinstance(r, BaseException) else
                WriteOutcome(first + i, term, r, AckOutcome(AckLevel.MAJORITY, False,
                                                            confirmed_members(first + i, match)), latency)
                for i, r in enumerate(results)]

    def _note_semi_sync(self, index: int, ack: AckRequest, outcome: AckOutcome) -> None:
        if not self.semi_sync.observe(outcome.degraded, index, ack.min_replicas):
            return
        self.metrics.semi_sync_transition(outcome.degraded)
        if outcome.degraded:
            log.warning("semi-sync degraded", index=index, timeout_ms=ack.timeout_ms, min_replicas=ack.min_replicas,
                        confirmed_by=outcome.confirmed_by,
                        detail="writes are acknowledged after commit without the semi-sync replicas, "
                               "until they catch up")
        else:
            log.info("semi-sync recovered", index=index, confirmed_by=outcome.confirmed_by)

    def _check_semi_sync_recovery(self) -> None:
        match = self.match_indexes()
        if self.semi_sync.caught_up(match, self.members.semi_sync_set(self.node.conf, self.cfg.id)):
            self.metrics.semi_sync_transition(False)
            log.info("semi-sync recovered", caught_up_to=self.semi_sync.recover_at,
                     confirmed_by=confirmed_members(self.semi_sync.recover_at, match))

    def _await_durable(self, index: int, ack: AckRequest) -> asyncio.Future[AckOutcome]:
        now = self.clock.monotonic()
        if ack.level == AckLevel.SYNC:
            members = self.members.sync_set(self.node.conf)
            need = len(members)
            deadline = now + ack.timeout_ms / 1000
        else:
            members = self.members.semi_sync_set(self.node.conf, self.cfg.id)
            need = ack.min_replicas
            # Degraded, or the set shrank below `need` since the write was checked: answer as soon as
            # committed (confirmed already, or not, and then said degraded), do not wait out the timeout.
            hopeless = self.semi_sync.degraded or need > len(members)
            deadline = now if hopeless else now + ack.timeout_ms / 1000
        fut = self.durability.add(index, ack.level, members, need, deadline, self.match_indexes(), now)
        self._wake.set()
        return fut

    # ------------------------------------------------------------------------------------------
    # Reads
    # ------------------------------------------------------------------------------------------
    async def read_index(self) -> int:
        """A linearizable read point (ReadIndex); concurrent callers share one quorum round."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reads.append(fut)
        self._wake.set()
        return await fut

    async def wait_applied(self, index: int) -> None:
        if self.applied >= index:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._applied_heap, _IndexWaiter(index, next(self._heap_seq), fut))
        await fut

    async def linearizable_barrier(self) -> int:
        """Wait until this node may serve a linearizable read; returns the read index."""
        idx = await self.read_index()
        await self.wait_applied(idx)
        self.reads_served += 1
        self.metrics.linearizable_reads.inc()
        return idx

    # ------------------------------------------------------------------------------------------
    # Membership and leadership
    # ------------------------------------------------------------------------------------------
    async def change_member(self, change: ConfChange) -> tuple[int, int]:
        """Propose a membership change and wait until it is applied here. Refused (ConfChangeRejected) if
        it would leave fewer healthy members than the new configuration needs (`reconfig_check`)."""
        self._refuse_writes_without_space()
        if not self.is_leader:
            raise self.not_leader()
        address = MemberInfo.decode(change.context).address if change.context else ""
        check_change(change, self.reconfig_view(), address)
        loop = asyncio.get_running_loop()
        placed: asyncio.Future[tuple[int, int]] = loop.create_future()
        applied: asyncio.Future[Any] = loop.create_future()
        self._conf_requests.append(_ConfRequest(change, placed, applied))
        self._wake.set()
        index, term = await placed
        await applied
        return index, term

    def reconfig_view(self) -> ClusterView:
        """What the strict reconfiguration check needs: per member, its match index and when the leader
        last heard from it (core progress and the lag monitor)."""
        st = self.node.status()
        now = self.clock.monotonic()
        contact = self.lag.last_contact
        health = {nid: MemberHealth(p.match, (now - contact[nid]) if nid in contact else None, p.recent_active)
                  for nid, p in st.progress.items() if nid != self.cfg.id}
        addresses = {nid: info.address for nid, info in self.members.all().items() if info.address}
        return ClusterView(self.cfg.id, st.conf, st.last_index, self.cfg.election_ticks * self.cfg.tick_ms / 1000,
                           health, addresses)

    async def transfer_leader(self, target: int) -> None:
        if target not in self.node.conf.voters:
            raise ConfChangeRejected(f"node {target} is not a voter")
        if self.is_leader:
            check_transfer(target, self.reconfig_view())
        self._local_ops.append(lambda: self.node.transfer_leader(target))
        self._wake.set()

    async def snapshot_now(self) -> int:
        """Record a snapshot point at the applied index and compact the log; returns the snapshot index.
        A compaction already under way is waited for rather than started twice. The write-back buffer is
        flushed first, so that the snapshot point is the applied index of now."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flush_waiters.append(fut)
        self._wake.set()
        await fut
        return await asyncio.shield(self._compaction())

    def _compaction(self) -> asyncio.Task[int]:
        """The compaction under way, or a new one."""
        task = self._snapshot_task
        if task is None or task.done():
            task = self._snapshot_task = asyncio.create_task(self._take_snapshot(), name="raftkv-snapshot")
            task.add_done_callback(self._snapshot_finished)
        return task

    async def _take_snapshot(self) -> int:
        """Record a snapshot point and compact the log on the I/O thread, keeping the newest
        `snapshot_keep_entries` entries so a briefly lagging follower catches up without a snapshot.
        No copy of the state machine is made: LMDB's `kv` at its applied index is the snapshot, streamed
        to a follower that needs one."""
        # From the applied index LMDB holds: entries applied only into the write-back buffer are
        # re-applied from the log after a crash, so they stay (the store enforces it too).
        compact_to = max(0, self.store.durable_applied_index() - self.cfg.snapshot_keep_entries)
        floor = self.transport.snapshot_floor()
        if floor is not None:  # a follower installing that snapshot will need the entries after it
            compact_to = min(compact_to, floor)
        index = await self.io.run(self.store.compact, compact_to, self.node.conf_as_of(compact_to))
        log.info("log compacted", snapshot_index=index, compacted_through=compact_to)
        return index

    # ------------------------------------------------------------------------------------------
    # The loop
    # ------------------------------------------------------------------------------------------
    async def _run(self) -> None:
        """The loop. If it cannot go on (corrupted data, a failing disk, a bug), it records why in
        `fatal` and sets `failed`: the process then stops, rather than keep answering probes and
        reporting a role it no longer plays."""
        try:
            while not self._stopping:
                await self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    break
                self._take_inputs()
                while self.node.has_ready() and not self._stopping:
                    self._in_ready = True
                    await self._handle_ready(self.node.ready())
                    self._in_ready = False
                    await self._flush_if_due()
                    self._take_inputs()
                await self._flush_if_due()
                self._arm_flush_timer()
                self._after_round()
        except _Stopping:
            pass
        except Exception as e:  # noqa: BLE001 - whatever stopped the loop stops the node
            self.fatal = e
            if is_storage_fault(e):
                log.error("host loop stopped; stopping the node", error=str(e), kind=type(e).__name__)
            else:
                log.exception("host loop crashed; stopping the node")
            self._fail_everything(ShuttingDown("node stopped after an internal error"))
            self.failed.set()

    def readiness(self) -> tuple[bool, str]:
        """Whether this node can serve now, and if not why: its loop runs, it knows a leader, it is not
        stopping, and no alarm stops it serving. (Read from the metrics thread too: attributes only.)"""
        task = self._loop_task
        if self._stopping:
            return False, "stopping"
        if self.removal.removed:
            return False, self.removal.message
        if self.fatal is not None or task is None or task.done():
            return False, "host loop stopped"
        if self.nospace:
            return False, f"NOSPACE alarm: {self.nospace}"
        if self.identity is not None and self.identity.problem:
            return False, self.identity.problem
        if not self.leader_id:
            return False, "no leader known"
        return True, ""

    # ------------------------------------------------------------------------------------------
    # The NOSPACE alarm
    # ------------------------------------------------------------------------------------------
    def _refuse_writes_without_space(self) -> None:
        if self.nospace:
            raise self._nospace_error()

    def _nospace_error(self) -> NoSpace:
        return NoSpace(f"NOSPACE: node {self.cfg.id} cannot persist to its data directory ({self.nospace}); "
                       "it takes no writes until space is freed")

    async def _persist(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one persist step (a whole Ready's transaction) on the I/O thread. Without space, the same
        step is retried every NOSPACE_RETRY_SECONDS under the NOSPACE alarm until it succeeds: its
        transaction was aborted whole, and nothing that depends on it (messages sent after persisting,
        such as a follower's acknowledgement of an append, or `advance`) happens before it succeeds,
        while the loop takes no new proposal. Any other failure is raised: the loop cannot go on."""
        while True:
            try:
                result = await self.io.run(fn, *args)
            except Exception as e:
                if not is_nospace(e):
                    raise
                self._raise_nospace(e)
                await asyncio.sleep(NOSPACE_RETRY_SECONDS)
                if self._stopping:
                    raise _Stopping() from None
                self._shed_while_stuck()
                continue
            if self.nospace:
                log.info("NOSPACE alarm cleared: the node persists again and takes writes", id=self.cfg.id)
                self.nospace = ""
                self.metrics.alarm.labels("nospace").set(0)
            return result

    def _shed_while_stuck(self) -> None:
        """While a Ready waits for space, nothing is stepped: drop what peers sent meanwhile (Raft takes
        lost messages in its stride: the leader sends again) rather than queue it without bound, and
        send linearizable reads elsewhere, since no read round can run here."""
        self.inbox.drop_messages()
        reads, self._reads = self._reads, []
        err = LeadershipLost(f"node {self.cfg.id} cannot confirm a read point while its NOSPACE alarm holds; "
                             "retry on another node")
        for f in reads:
            if not f.done():
                f.set_exception(err)

    def _raise_nospace(self, err: BaseException) -> None:
        if self.nospace:
            return
        self.nospace = str(err) or type(err).__name__
        self.metrics.alarm.labels("nospace").set(1)
        log.error("NOSPACE alarm: cannot persist, writes are refused until space is freed", id=self.cfg.id,
                  error=self.nospace, retry_every_seconds=NOSPACE_RETRY_SECONDS)
        # Writes still queued have not reached the log: refuse them now, retryable, as new ones are.
        refused = self._nospace_error()
        for p in self._proposals:
            if not p.placed.done():
                p.placed.set_exception(refused)
        self._proposals.clear()
        for r in self._conf_requests:
            if not r.placed.done():
                r.placed.set_exception(refused)
        self._conf_requests.clear()

    def _take_inputs(self) -> None:
        node = self.node
        now = self.clock.monotonic()
        ticks, self._ticks_due = self._ticks_due, 0
        for _ in range(ticks):
            node.tick()
        inbox = self.inbox.messages
        leader = self.is_leader
        while inbox:
            m = inbox.popleft()
            if leader and m.type in RESPONSES:
                self.lag.heard_from(m.frm, m.applied, now)
            if m.commit > self._known_commit:
                self._known_commit = m.commit
            node.step(m)
        if self.inbox.snapshots:
            self._snapshots_stepped += [(a.msg.snapshot.data, a.installed) for a in self.inbox.take_snapshots()
                                        if a.msg.snapshot is not None]
        if self.inbox.reports:
            self._take_reports()
        while self._local_ops:
            try:
                self._local_ops.popleft()()
            except ProposalDropped:
                pass
        if self._proposals:
            self._place_proposals()
        if self._conf_requests:
            self._place_conf_changes()
        if self._reads and (not self._read_batches or now - self._round_started >= self._round_patience):
            # One round in flight at a time: reads arriving meanwhile all share the next one.
            self._round_started = now
            self._start_read_round()

    def _place_proposals(self) -> None:
        batch = list(self._proposals)
        self._proposals.clear()
        live = [p for p in batch if not p.placed.done()]
        if not live:
            return
        try:
            first, _ = self.node.propose_many([d for p in live for d in p.datas])
        except ProposalDropped:
            err = self.not_leader()
            for p in live:
                p.placed.set_exception(err)
            self.metrics.proposals_failed.inc(sum(len(p.datas) for p in live))
            return
        term = self.node.term
        waiters = self._apply_waiters
        for p in live:
            p.placed.set_result((first, term))
            if p.applied is not None:
                for i, fut in enumerate(p.applied):
                    waiters[first + i] = (term, fut)
            first += len(p.datas)

    def _place_conf_changes(self) -> None:
        if self.identity is not None and self.identity.record_in_flight():
            return  # one membership change at a time: an operator's waits for the identity record
        while self._conf_requests:
            req = self._conf_requests.popleft()
            if req.placed.done():
                continue
            try:
                idx = self.node.propose_conf_change(req.change)
            except ProposalDropped:
                req.placed.set_exception(self.not_leader())
            except ConfChangeRejected as e:
                req.placed.set_exception(e)
            else:
                req.placed.set_result((idx, self.node.term))
                self._apply_waiters[idx] = (self.node.term, req.applied)

    def _start_read_round(self) -> None:
        batch, self._reads = self._reads, []
        batch = [f for f in batch if not f.done()]
        if not batch:
            return
        ctx = self.cfg.id.to_bytes(8, "big") + next(self._read_seq).to_bytes(8, "big")
        try:
            self.node.read_index(ctx)
        except ProposalDropped:
            err = self.not_leader()
            for f in batch:
                f.set_exception(err)
            return
        self.read_rounds += 1
        self.metrics.read_index_rounds.inc()
        self._read_batches[ctx] = batch

    async def _handle_ready(self, rd: Ready) -> None:
        """One Ready, in the order DESIGN.md §4 asks for: committed entries applied into the store's
        write-back buffer and their writers answered (they are durable on a majority, and this node's
        reads see the buffer), then one synced transaction for what must be durable before messages
        that depend on it leave (entries, snapshot, a new term or vote, a membership change), which
        carries the buffer to LMDB beside its applied index. A Ready that only commits costs no fsync."""
        now = self.clock.monotonic()
        if rd.soft_state is not None:
            self._on_soft_state(rd)
        self.lease_clock.note_sent(rd.round_sent, self.clock.monotonic_ns())
        if rd.messages:
            self._stamp(rd.messages)
            self.transport.send(rd.messages)
        if self.is_leader and rd.entries:
            self.lag.clock.record(rd.entries[0].index, [e.size() for e in rd.entries], now)
        member_changes = self.members.changes_in(rd.committed_entries)
        committed = rd.committed_entries
        results: list[Any] = []
        if committed and rd.snapshot is None:
            results = self._apply(rd)
            if not member_changes:
                self._after_apply(rd, results, member_changes)
        if self._must_sync(rd, member_changes):
            members = self.members.encode_after(member_changes) if member_changes else None
            # The log records are encoded here: a thread running Python waits for the GIL while the loop
            # serves gRPC (benchmarks/README.md), so the I/O thread only writes and fsyncs.
            records = self.store.encode_entries(rd.entries) if rd.entries else None
            await self._persist(self._persist_timed, rd.hard_state, rd.entries, rd.snapshot, members, records)
        elif rd.hard_state is not None:
            self.store.note_hard_state(rd.hard_state)
        if rd.snapshot is not None:
            self.applied = rd.snapshot.meta.index
            self.members.replace_from_snapshot(self.store.snapshot_members())
            self._sync_transport_peers()
            if self.identity is not None:
                self.identity.members_changed([])
            log.info("installed snapshot", index=rd.snapshot.meta.index, term=rd.snapshot.meta.term)
            self._settle_snapshots(rd.snapshot.data)
            # The round that installs a snapshot may take a while (one that came whole inside its
            # message is copied; a full disk is waited out). The ticks that fired meanwhile would be
            # stepped before the leader's heartbeats waiting in the inbox, and this follower would start
            # a needless election; the snapshot came from that leader, so its timer starts afresh.
            self._ticks_due = 0
        if rd.entries:
            self._persisted_index = rd.entries[-1].index
            if self.identity is not None:
                self.identity.observe_appended(rd.entries)
            self._release_persist_waiters(rd)
        if rd.persisted_messages:
            self._stamp(rd.persisted_messages)
            self.transport.send(rd.persisted_messages)
        if committed and (rd.snapshot is not None or member_changes):
            # After an install (the entries follow the snapshot), or once a membership change is
            # durable with the registry it makes (answered only then).
            self._after_apply(rd, self._apply(rd) if rd.snapshot is not None else results, member_changes)
        for rs in rd.read_states:
            for fut in self._read_batches.pop(rs.context, []):
                if not fut.done():
                    fut.set_result(rs.index)
        self.node.advance(rd)

    def _must_sync(self, rd: Ready, member_changes: list[ConfChange]) -> bool:
        """Whether this Ready needs its synced transaction now: a commit index alone does not (Raft
        learns it again from its peers), nor do applied entries (re-applied from the log after a crash;
        the buffer is flushed on its own when due, `_flush_if_due`)."""
        if rd.snapshot is not None or rd.entries or member_changes:
            return True
        hs = rd.hard_state
        if hs is not None:
            old = self.store.hard_state()
            if (hs.term, hs.vote) != (old.term, old.vote):
                return True
        return False

    def _apply(self, rd: Ready) -> list[Any]:
        results = self.store.apply(rd.committed_entries, rd.conf_state)
        self.metrics.apply_seconds.observe(self.store.last_apply_seconds)
        self._arm_flush_timer()
        return results

    def _arm_flush_timer(self) -> None:
        """Wake the loop when the write-back buffer must reach LMDB, should no Ready take it first."""
        if self._flush_timer is not None or self._stopping:
            return
        deadline = self.store.flush_deadline()
        if deadline is None:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._flush_timer = None
            self._wake.set()

        self._flush_timer = loop.call_later(max(0.0, deadline - self.clock.monotonic()) + 0.001, fire)

    async def _flush_if_due(self) -> None:
        """The write-back buffer alone, in one synced transaction, when it is due (no Ready's commit took
        it in time) or asked for: a background commit, counted apart from the Readies' fsyncs."""
        if not (self._flush_waiters or self.store.flush_due()):
            return
        await self._persist(self._flush_timed)
        waiters, self._flush_waiters = self._flush_waiters, []
        for f in waiters:
            if not f.done():
                f.set_result(None)

    def _persist_timed(self, *args: Any) -> None:
        """On the I/O thread; timed there, so the fsync histogram measures the write and not the hand-off."""
        t0 = time.perf_counter()
        self.store.persist(*args)
        self.metrics.fsync_seconds.observe(time.perf_counter() - t0)

    def _flush_timed(self) -> None:
        t0 = time.perf_counter()
        self.store.flush()
        self.metrics.backend_commit_seconds.observe(time.perf_counter() - t0)

    def _stamp(self, msgs: list[Message]) -> None:
        stamp = self.clock.monotonic_ns()
        applied = self.applied
        for m in msgs:
            if m.type in RESPONSES:
                m.stamp = stamp
                m.applied = applied
            elif m.type in DATED:  # a leader's send time: lets the target date a TimeoutNow
                m.stamp = stamp

    def _release_persist_waiters(self, rd: Ready) -> None:
        if not self._persist_waiters:
            return
        terms = {e.index: e.term for e in rd.entries}
        for idx in [i for i in self._persist_waiters if i <= self._persisted_index]:
            term, fut = self._persist_waiters.pop(idx)
            if fut.done():
                continue
            if terms.get(idx, term) == term:
                fut.set_result(None)
            else:
                fut.set_exception(ProposalLost(idx))
                self.metrics.proposals_failed.inc()

    def _after_apply(self, rd: Ready, results: list[Any], member_changes: list[ConfChange]) -> None:
        entries = rd.committed_entries
        self.applied = entries[-1].index
        if member_changes:
            self.members.apply(member_changes, self.node.conf)
            self._sync_transport_peers()
            if self.identity is not None:
                self.identity.members_changed(member_changes)
        self._answer(entries, results)
        if any(cc.node_id == self.cfg.id for cc in member_changes) and \
                self.cfg.id not in self.node.conf_as_of(self.applied).members():
            self._on_removed(f"applied its own removal at index {self.applied}")
        self.metrics.proposals_committed.inc(len(entries))
        self.metrics.proposals_applied.inc(len(entries))
        heap = self._applied_heap
        while heap and heap[0].index <= self.applied:
            w = heapq.heappop(heap)
            if not w.future.done():
                w.future.set_result(None)
        if self._log_needs_compaction() and self.clock.monotonic() >= self._snapshot_retry_at:
            self._compaction()

    def _answer(self, entries: list[Entry], results: list[Any]) -> None:
        """Hand each applied entry's result to the writer waiting for it (once: an answered writer's
        waiter is gone)."""
        waiters = self._apply_waiters
        if not waiters:
            return
        for e, res in zip(entries, results, strict=True):
            waiter = waiters.pop(e.index, None)
            if waiter is None:
                continue
            term, fut = waiter
            if e.term != term:
                self.metrics.proposals_failed.inc()
            if fut.done():
                continue
            if e.term != term:
                fut.set_exception(ProposalLost(e.index))
            elif isinstance(res, Exception):
                fut.set_exception(res)
            else:
                fut.set_result(res)

    def _snapshot_finished(self, task: asyncio.Task[int]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._snapshot_retry_at = self.clock.monotonic() + SNAPSHOT_RETRY_SECONDS
            log.error("snapshot failed; the log keeps growing until one succeeds", error=str(task.exception()),
                      retry_in_seconds=SNAPSHOT_RETRY_SECONDS)

    def _log_needs_compaction(self) -> bool:
        """By count, or by size -- but never more often than every `snapshot_keep_entries` entries, since
        that many stay in the log after each compaction whatever their size."""
        # Counted from the applied index LMDB holds, the most a compaction may take (`_take_snapshot`).
        since = self.store.durable_applied_index() - self.store.snapshot_index()
        if since >= self.cfg.snapshot_entries:
            return True
        # The size is read from LMDB, on the apply path: at most once per LOG_SIZE_CHECK_EVERY entries (or per
        # snapshot_keep_entries, if fewer).
        every = max(1, min(LOG_SIZE_CHECK_EVERY, self.cfg.snapshot_keep_entries))
        durable = self.store.durable_applied_index()
        if since < self.cfg.snapshot_keep_entries or durable - self._log_size_checked_at < every:
            return False
        self._log_size_checked_at = durable
        return self.store.log_bytes() >= self.cfg.snapshot_log_bytes

    def _sync_transport_peers(self) -> None:
        members = self.members.all()
        for nid, info in members.items():
            if nid != self.cfg.id and info.address:
                self.transport.add_peer(nid, info.address)
        departing = self.node.departing()  # still to be told they were removed: keep their connections
        self._lingering_peers = bool(departing)
        for nid in self.transport.peer_ids():
            if nid not in members and nid not in departing:
                self.transport.remove_peer(nid)

    # ------------------------------------------------------------------------------------------
    # Removal from the cluster (see removal.py)
    # ------------------------------------------------------------------------------------------
    def _on_removed(self, how: str) -> None:
        if self.removal.note(how):
            self._fail_everything(self.removal.error())

    def peer_refused(self, peer: int, reason: str) -> None:
        """The transport's report that `peer` refused our stream because we are not a member."""
        if not self.removal.removed and self.removal.refused_by(peer, self.node.conf.voters):
            self._on_removed(f"peers refuse it as a non-member: {reason}")

    def _check_removed(self) -> None:
        if self._lingering_peers and not self.node.departing():
            self._sync_transport_peers()
        if not self.removal.removed and self.node.removed_at():
            self._on_removed(f"the leader says it is not in the configuration at index {self.node.removed_at()}")

    def _on_soft_state(self, rd: Ready) -> None:
        ss = rd.soft_state
        assert ss is not None
        if ss.leader != self._last_leader:
            if ss.leader != NONE:
                self.leader_changes += 1
                self.metrics.leader_changes.inc()
            log.info("leader changed", leader=ss.leader, term=self.node.term, role=ss.role.name.lower())
            # Reads waiting on a ReadIndex round of the old leader will never be answered: fail them now
            # (retryable), rather than letting them run into their deadline.
            batches, self._read_batches = self._read_batches, {}
            err = LeadershipLost("leadership changed during the read; retry")
            for futs in batches.values():
                for f in futs:
                    if not f.done():
                        f.set_exception(err)
            self._last_leader = ss.leader
            if ss.leader == self.cfg.id:
                self.lag.start_term(self.clock.monotonic())
        self.metrics.has_leader.set(1 if ss.leader != NONE else 0)
        self.metrics.is_leader.set(1 if ss.role == StateRole.LEADER else 0)
        if ss.role != StateRole.LEADER:
            self.durability.update(self.match_indexes(), self.clock.monotonic())

    def _after_round(self) -> None:
        now = self.clock.monotonic()
        if self._snapshots_stepped:
            self._settle_snapshots(None)
        self._check_removed()
        # Pending: in the leader's log, not yet applied (whatever ack level answered the client already).
        self.metrics.proposals_pending.set(max(0, self.node.raft_log.last_index() - self.applied)
                                           if self.is_leader else 0)
        if self.identity is not None:
            self.identity.after_round()
        if self.is_leader:
            if self.durability:
                self.durability.update(self.match_indexes(), now)
            if self.semi_sync.degraded:
                self._check_semi_sync_recovery()
            if now - self._last_lag_check >= 0.5:
                self._last_lag_check = now
                self._compute_lag(now)
        nxt = self.durability.next_deadline()
        if nxt is not None:
            asyncio.get_running_loop().call_later(max(0.0, nxt - now) + 0.001, self._wake.set)

    def _compute_lag(self, now: float) -> tuple[list[FollowerLag], list[Any]]:
        st = self.node.status()
        progress = {nid: (p.match, p.next, p.state, p.is_learner) for nid, p in st.progress.items()
                    if nid != self.cfg.id}
        lags, transitions = self.lag.compute(progress, st.last_index, st.commit, now)
        for t in transitions:
            if t.critical:
                log.warning("replication lag critical", follower=t.id, lag_entries=t.lag.lag_entries,
                            flush_lag_seconds=round(t.lag.flush_lag_seconds, 3))
            else:
                log.info("replication lag recovered", follower=t.id, lag_entries=t.lag.lag_entries)
        self.metrics.observe_lag(lags)
        return lags, transitions

    def _fail_everything(self, err: Exception) -> None:
        """Answer every waiting request with `err` (nothing of theirs reached the log, or they only read),
        except writes already proposed: those may still commit elsewhere, so they learn the outcome is
        unknown rather than being invited to retry."""
        unknown = OutcomeUnknown(f"{err}; the write was already proposed and may still be applied")
        for p in self._proposals:
            if not p.placed.done():
                p.placed.set_exception(err)
        self._proposals.clear()
        for r in self._conf_requests:
            if not r.placed.done():
                r.placed.set_exception(err)
        self._conf_requests.clear()
        for f in self._reads:
            if not f.done():
                f.set_exception(err)
        self._reads = []
        for futs in self._read_batches.values():
            for f in futs:
                if not f.done():
                    f.set_exception(err)
        self._read_batches = {}
        for _, fut in list(self._apply_waiters.values()) + list(self._persist_waiters.values()):
            if not fut.done():
                fut.set_exception(unknown)
        self._apply_waiters.clear()
        self._persist_waiters.clear()
        for w in self._applied_heap:
            if not w.future.done():
                w.future.set_exception(err)
        self._applied_heap = []
        for f in self._flush_waiters:
            if not f.done():
                f.set_exception(err)
        self._flush_waiters = []
        self.durability.fail_all(unknown)

    # ------------------------------------------------------------------------------------------
    # Member registry helpers for services
    # ------------------------------------------------------------------------------------------
    def member_info(self) -> dict[int, MemberInfo]:
        return self.members.all()


def bootstrap_store(store: NodeStore, cfg: ServerConfig) -> None:
    """Write the founding members into a brand-new store (a no-op when the store already has a log)."""
    from ..core import ConfState

    if cfg.join or store.log.last_index() > 0:
        return
    conf = ConfState(frozenset(cfg.peers), frozenset())
    contexts = {nid: MemberInfo(addr).encode() for nid, addr in cfg.peers.items()}
    store.bootstrap(conf, contexts)

