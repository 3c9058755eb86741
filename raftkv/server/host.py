"""NodeHost: the one asyncio loop that drives a node.

The loop waits for something to happen (a peer message in its inbox, a client request, a tick), steps
everything that arrived into the core at once, then works through the core's Ready: send what can go
now, apply committed entries into the store's write-back buffer and answer their writers, persist what
must be durable (one synced commit, on the I/O executor, which also takes the buffer to the store), send
what had to wait for durability, advance. Whatever arrives while an fsync is in progress is taken in the
next round, so one fsync covers many writes (group commit) and one quorum round covers many reads. A
write costs one fsync, its append; the buffer is flushed by the next Ready's commit, or on its own within
FLUSH_MAX_SECONDS / FLUSH_MAX_ENTRIES (DESIGN.md §4).

Beside the loop: the index-waiter registry (waiters.py), proposal batching (proposals.py), ReadIndex
rounds (read_rounds.py) and compaction scheduling (compaction.py). Above it, the ack and read policies
(layers/) call a few primitives: `propose`, `read_index`, `wait_applied`, `wait_persisted`,
`wait_durable`, and read the state machine through `read`. The loop is the only code that calls the core.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from .. import hop_trace
from ..core import (
    NONE,
    ConfChange,
    Config,
    LogStorage,
    Message,
    MessageType,
    ProposalDropped,
    RaftNode,
    Ready,
    StateRole,
    StepRejected,
)
from ..core.witness import stripped
from ..storage.disk_space import DiskSpace
from ..storage.errors import CorruptionError, is_storage_fault
from ..transport.envelope import applied_of, echo_of, stamp_of, wrap
from .commit_notice import CommitNotices
from .compaction import Compactor
from .config import ServerConfig
from .corruption import CorruptionChecker
from .errors import LeadershipLost, OutcomeUnknown, RaftLoopHeldUp, ShuttingDown
from .host_inbox import InboxIntake
from .host_views import HostViews
from .identity import IdentityGuard
from .lag import LagMonitor, LagThresholds
from .lease_clock import LeaseClock, lease_seconds
from .members import MemberInfo, MemberRegistry
from .membership_ops import MembershipOps
from .metrics import Metrics
from .nospace import NoSpaceAlarm, Stopping
from .peer_rtt import PeerRtt
from .ports import Clock, DiskRoom, Inbox, IOExecutor, PeerTransport, SystemClock, ThreadIO
from .proposals import Proposal, ProposalQueue
from .read_rounds import ReadRounds
from .removal import Removal
from .stall_watch import StallWatch
from .stamps import StalenessStamps
from .store import NodeStore
from .transfer_guard import DATED, TransferGuard
from .waiters import Durability, IndexWaiters
from .witness_role import RoleMismatch, payload_missing, witness_mismatch

log = structlog.get_logger("raftkv.host")

RESPONSES = (MessageType.APP_RESP, MessageType.HEARTBEAT_RESP)
ECHOED = (MessageType.APP, MessageType.HEARTBEAT)
"""A leader's messages that carry, in their envelope, the newest stamp of the target it vouches for."""
HELD_UP_REFUSE_AFTER_S = 2.0
"""A Raft loop held up this long (or four election timeouts, if longer) refuses what would wait for it
(`_held_up`). Shorter hiccups (a big compaction's transaction, a slow fsync) are waited out: the requests
they delay are answered late, not failed."""
INLINE_SYNC_ENTRIES = 1
INLINE_SYNC_BYTES = 64 << 10
"""A follower's append of at most this many entries and bytes (a lone writer's) is synced on the loop's
thread (`_sync_inline`). More (pipelined writes, even 3-4 per Ready) go to the I/O thread, so that the
loop takes the next append meanwhile (with 4 here, c=16 unary writes lost ~10 % in A/B runs)."""
T = TypeVar("T")


class NodeHost(InboxIntake, HostViews, MembershipOps, NoSpaceAlarm):
    """The loop and its primitives; what it takes from its inbox (host_inbox.py), shows of itself
    (host_views.py), does to membership (membership_ops.py) and does when the disk is full (nospace.py)
    are in the modules named."""

    def __init__(self, cfg: ServerConfig, store: NodeStore, transport: PeerTransport, metrics: Metrics,
                 seed: int | None = None, *, clock: Clock | None = None, io: IOExecutor | None = None,
                 inbox: Inbox | None = None, identity: IdentityGuard | None = None,
                 space: DiskRoom | None = None,
                 raft_factory: Callable[[Config, LogStorage], RaftNode] = RaftNode) -> None:
        """Everything the host touches comes from outside (ports.py): its store, its transport and the
        inbox it pulls peers' messages from (the transport's, unless given), its clock, and the executor
        its synced transactions run on, and the data directory's free space. Left out, the clock is the
        system's, the executor a thread and the space the data directory's filesystem's. `raft_factory`
        builds the core from its Config and log (the simulator's Figure-8 settings and planted bugs)."""
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
            witness_payload_after_ticks=-(-cfg.witness_payload_after_ms // cfg.tick_ms),
            defer_commit_notice=cfg.commit_notice_delay_ms > 0,
            rng=random.Random(seed if seed is not None else cfg.id * 7919 + time.monotonic_ns()),
        )
        self.node = raft_factory(core_cfg, store.log)
        # When each round of heartbeats left, on our monotonic clock: leases and our own staleness proof.
        self.lease_clock = LeaseClock(lease_seconds(cfg.tick_ms, cfg.election_ticks, cfg.lease_drift_ticks))
        # Followers' stamps and the leader's echoes of them, in the messages' envelopes: staleness proofs.
        self.stamps = StalenessStamps()
        # A leader-transfer request that reaches us later than the leader waits for it is dropped.
        self.transfer_guard = TransferGuard(cfg.election_ticks * cfg.tick_ms / 1000)
        self.lag = LagMonitor(LagThresholds(cfg.lag_critical_entries, cfg.lag_critical_seconds))
        self.peer_rtt = PeerRtt(metrics.observe_rtt)
        self.waiters = IndexWaiters(on_lost=metrics.proposals_failed.inc)
        self.proposals = ProposalQueue()
        self.reads = ReadRounds(cfg.id, cfg.election_ticks * cfg.tick_ms / 1000)
        self.compactor = Compactor(cfg, store, lambda: self.node, transport, self.io, self.clock)
        self._wake = asyncio.Event()
        self.commit_notices = CommitNotices(cfg.commit_notice_delay_ms / 1000, self._wake.set)
        self.inbox.set_consumer(self._wake.set, self._admit)
        self._local_ops: deque[Callable[[], None]] = deque()
        self._round_hooks: list[Callable[[], None]] = []
        self._any_role_hooks: list[Callable[[], None]] = []
        self.snapshot_listeners: list[Callable[[int], None]] = []
        """Called with the index of each snapshot this node installs (the watch hub: events it skips)."""
        # Streamed snapshots handed to the core, by their data (a token naming the staged file): stepped
        # (answered once their Ready is written, or when the core did not take them).
        self._snapshots_stepped: list[tuple[bytes, asyncio.Future[bool]]] = []
        self._ticks_due = 0
        self.tick_s = cfg.tick_ms / 1000
        """The interval of the tick timer on the loop. The simulator sets it per node, with the node's clock
        rate, to model clocks that run fast or slow (lease reads' drift bound)."""
        self._refuse_after_ticks = max(4 * cfg.election_ticks, -(-int(HELD_UP_REFUSE_AFTER_S * 1000) // cfg.tick_ms))
        """Ticks not taken by the Raft loop after which it refuses requests (`_refuse_while_held_up`)."""
        self._tick_handle: asyncio.TimerHandle | None = None
        self.stall_watch = StallWatch(cfg.election_ticks * cfg.tick_ms / 1000, self._on_stall)
        """Ticks that come late: the event loop did not run (stall_watch.py)."""
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._persisted_index = store.log.last_index()
        self.applied = store.applied_index()
        self._flush_timer: asyncio.TimerHandle | None = None
        self._in_ready = False
        self.leader_changes = 0
        self._last_leader = NONE
        self._last_lag_check = 0.0
        self.nospace = ""
        """The persist error that raised the NOSPACE alarm; "" while there is none."""
        self.space: DiskRoom = space or DiskSpace(cfg.data_dir, cfg.disk_reserve_bytes)
        self.stalled = False
        """A Ready waits for space: the loop steps nothing, so this node plays no role meanwhile (it shows
        none in its status and role gauges, whatever its core last was)."""
        self._nospace_map = False  # the alarm is LMDB's map (--map-size) being full, not the filesystem
        self._room_task: asyncio.Task[None] | None = None
        self.fatal: BaseException | None = None
        """Why the host loop stopped, if it did; `failed` is set then and the process must stop."""
        self.failed = asyncio.Event()
        metrics.alarm.labels("nospace").set(0)
        self.removal = Removal(cfg.id, cfg.data_dir)
        self._lingering_peers = False  # transport peers kept for removed members still being told
        self.corruption: CorruptionChecker | None = None
        """The divergence checker and its CORRUPT alarm (corruption.py), given by the process lifecycle."""
        self.identity: IdentityGuard | None = identity
        """Peer identity and the member identity records (given by the process lifecycle; see identity.py)."""
        if identity is not None:
            identity.bind(self)

    # ------------------------------------------------------------------------------------------
    # Lifecycle
    # ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.members.load(self.cfg.peers, self.cfg.initial_peer_addresses)
        await self._create_reserve()
        for nid, info in self.members.all().items():
            if nid != self.cfg.id and info.address:
                self.transport.add_peer(nid, info.address, info.peer_address)
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
        self.stall_watch.stop()
        self._wake.set()
        if self._loop_task is not None:
            try:
                await asyncio.wait_for(self._loop_task, 5)
            except (TimeoutError, asyncio.CancelledError):
                self._loop_task.cancel()
        self._fail_everything(ShuttingDown("node is shutting down"))
        self._take_snapshot_arrivals()
        self._settle_snapshots(None)
        if self._room_task is not None:
            self._room_task.cancel()
        await self.compactor.stop()
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        self.commit_notices.cancel()
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
            if self._ticks_due == self._refuse_after_ticks:
                self._answer_while_held_up()
            self._wake.set()
            if not self._stopping:
                self._tick_handle = loop.call_later(self.tick_s, fire)
                self.stall_watch.beat(self.clock.monotonic(), self.tick_s)

        self._tick_handle = loop.call_later(self.tick_s, fire)

    def _on_stall(self, seconds: float) -> None:
        self.metrics.loop_stalls.inc()
        log.warning("event loop stalled", seconds=round(seconds, 3),
                    consequence="heartbeats, elections and answers waited: a thread holding the GIL, a slow "
                                "disk, swapping, CPU starvation, or a stopped process")

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
        if self.corruption is not None and (corrupt := self.corruption.not_ready()):
            return False, corrupt
        if (held := self._held_up()) is not None:
            return False, held
        if not self.leader_id:
            return False, "no leader known"
        return True, ""

    def _held_up(self, ticks: int | None = None) -> str | None:
        """Why the Raft loop cannot serve now, if it has not taken its ticks for `ticks` (an election
        timeout unless told): readiness says so from then."""
        if self._ticks_due < (ticks or self.cfg.election_ticks):
            return None
        return f"the Raft loop has been held up for {self._ticks_due * self.tick_s:.1f} s (a slow or frozen disk?)"

    def _refuse_while_held_up(self) -> None:
        """Refuse what would wait for a Raft loop held up for `_refuse_after_ticks`: the client can go to
        another node (its followers will have elected one by then)."""
        if (held := self._held_up(self._refuse_after_ticks)) is not None:
            raise self._held_up_error(held)

    def _answer_while_held_up(self) -> None:
        """The Raft loop has just been held up for `_refuse_after_ticks`: answer what waits for it and has
        not reached the log (queued writes, reads) with the refusal the next ones get at once. Writes in
        the Ready it is stuck in are in the log: they wait for their outcome."""
        held = self._held_up(self._refuse_after_ticks)
        if held is None:
            return
        log.warning("refusing requests: the raft loop is held up", seconds=round(self._ticks_due * self.tick_s, 3))
        e = self._held_up_error(held)
        self.proposals.refuse_all(e)
        self.reads.fail_all(e)

    def _held_up_error(self, held: str) -> RaftLoopHeldUp:
        return RaftLoopHeldUp(f"node {self.cfg.id}: {held}; nothing was proposed, try another node")

    def run_in_loop(self, op: Callable[[], None]) -> None:
        """Run `op` in the loop between Readys, where the core may be called."""
        self._local_ops.append(op)
        self._wake.set()

    def every_round(self, hook: Callable[[], None]) -> None:
        """Call `hook` after each round of the loop (a policy above that watches progress)."""
        self._round_hooks.append(hook)

    def every_round_any_role(self, hook: Callable[[], None]) -> None:
        """Call `hook` after each round of the loop whatever this node's role (`every_round` hooks run on
        the leader only): admission control re-reads its watermarks there."""
        self._any_role_hooks.append(hook)

    # ------------------------------------------------------------------------------------------
    # Primitives for the policies above (layers/acks.py, layers/read_path.py)
    # ------------------------------------------------------------------------------------------
    def admit_write(self, data: bytes | None = None) -> None:
        """Raise what a write of `data` proposed now would be refused with: NoSpace (under the NOSPACE
        alarm only deletes are taken; `data` None: refused), NotLeader."""
        self._refuse_writes_without_space(data)
        if self.corruption is not None:
            self.corruption.refuse_writes()
        if not self.is_leader:
            raise self.not_leader()
        self._refuse_while_held_up()

    async def propose(self, datas: list[bytes], results: bool = True) -> tuple[int, int, list[asyncio.Future[Any]] | None]:
        """Propose `datas` together, at consecutive indexes; returns (first index, term, one future per
        entry for its apply result, or None when `results` is False). Raises NotLeader, NoSpace."""
        if self.nospace:
            for data in datas:
                self.admit_write(data)
        else:
            self.admit_write()
        loop = asyncio.get_running_loop()
        placed: asyncio.Future[tuple[int, int]] = loop.create_future()
        applied = [loop.create_future() for _ in datas] if results else None
        self.proposals.add(Proposal(datas, placed, applied))
        self._wake.set()
        first, term = await placed
        return first, term, applied

    def wait_persisted(self, index: int, term: int) -> asyncio.Future[None]:
        """Resolves once entry `index` of `term` is durable in this node's log (ProposalLost if another
        term's entry took its place)."""
        return self.waiters.wait_persisted(index, term, self._persisted_index)

    def wait_durable(self, index: int, members: frozenset[int], need: int, timeout_s: float,
                     shape: Callable[[Durability], T] | None = None) -> asyncio.Future[T]:
        """Resolves once `need` of `members` hold entry `index` durably, or after `timeout_s`, with who
        did (a Durability, or what `shape` makes of it)."""
        now = self.clock.monotonic()
        fut = self.waiters.wait_durable(index, members, need, now + timeout_s, self.match_indexes(), now, shape)
        self._wake.set()
        return fut

    async def read_index(self) -> int:
        """A linearizable read point (ReadIndex); concurrent callers share one quorum round."""
        self._refuse_while_held_up()
        fut = self.reads.request()
        self._wake.set()
        return await fut

    async def wait_applied(self, index: int) -> None:
        if self.applied >= index:
            return
        await self.waiters.wait_applied(index)

    async def linearizable_barrier(self) -> int:
        """Wait until this node may serve a linearizable read; returns the read index."""
        idx = await self.read_index()
        await self.wait_applied(idx)
        self.metrics.linearizable_reads.inc()
        return idx

    def read(self, fn: Callable[[NodeStore], T]) -> T:
        """Read the state machine as it is now on this node (`fn` is given the store; it may run on a
        scan thread). The read policy decides beforehand whether this node may answer."""
        return fn(self.store)

    async def flush_now(self) -> None:
        """Bring the write-back buffer to LMDB now: a backup is cut from LMDB-durable state only, and
        this makes it as new as what this node has applied."""
        fut = self.waiters.wait_flushed()
        self._wake.set()
        await fut

    async def snapshot_now(self) -> int:
        """Record a snapshot point at the applied index and compact the log; returns the snapshot index.
        A compaction already under way is waited for rather than started twice. The write-back buffer is
        flushed first, so that the snapshot point is the applied index of now."""
        fut = self.waiters.wait_flushed()
        self._wake.set()
        await fut
        return await asyncio.shield(self.compactor.compaction())

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
                if hop_trace.ON:
                    hop_trace.mark("loop.wake")
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
                self.commit_notices.arm(self.node, self.clock.monotonic())
                self._after_round()
        except Stopping:
            pass
        except Exception as e:  # noqa: BLE001 - whatever stopped the loop stops the node
            self.fatal = e
            if is_storage_fault(e) or isinstance(e, RoleMismatch):
                log.error("host loop stopped; stopping the node", error=str(e), kind=type(e).__name__)
            else:
                log.exception("host loop crashed; stopping the node")
            self._fail_everything(ShuttingDown("node stopped after an internal error"))
            self.failed.set()

    def _take_inputs(self) -> None:
        node = self.node
        now = self.clock.monotonic()
        ticks, self._ticks_due = self._ticks_due, 0
        if ticks >= self.cfg.election_ticks:
            # The event loop ran (the ticks were counted) but the Raft loop did not take them: a Ready
            # held it up, typically its synced commit on a slow or frozen disk.
            log.warning("raft loop held up", seconds=round(ticks * self.tick_s, 3),
                        consequence="no heartbeats, votes or commits meanwhile; look at the disk's fsync latency")
        for _ in range(ticks):
            node.tick()
        self.commit_notices.send_if_due(node, now)
        inbox = self.inbox.messages
        leader = self.is_leader
        while inbox:
            m = inbox.popleft()
            if leader and m.type in RESPONSES:
                self.lag.heard_from(m.frm, applied_of(m), now)
                if m.type == MessageType.HEARTBEAT_RESP:
                    self.peer_rtt.answered(m, now)
            try:
                node.step(m)
            except StepRejected as e:
                log.warning("dropped a message no peer may send", reason=str(e))
                continue
            self._take_envelope(m)
        if self.is_leader:
            self.stamps.confirm(node.confirmed_round())
        if self.inbox.snapshots:
            self._take_snapshot_arrivals()
        if self.inbox.reports:
            self._take_reports()
        while self._local_ops:
            try:
                self._local_ops.popleft()()
            except ProposalDropped:
                pass
        if self.proposals.writes:
            self.proposals.place_writes(node, self.waiters, self.not_leader, self.metrics.proposals_failed.inc)
        if self.proposals.conf_changes and not (self.identity is not None and self.identity.record_in_flight()):
            # One membership change at a time: an operator's waits for the identity record.
            self.proposals.place_conf_changes(node, self.waiters, self.not_leader)
        if self.reads.due(now) and self.reads.start(node, now, self.not_leader):
            self.metrics.read_index_rounds.inc()

    async def _handle_ready(self, rd: Ready) -> None:
        """One Ready, in the order DESIGN.md §4 asks for: committed entries applied into the store's
        write-back buffer and their writers answered (they are durable on a majority, and this node's
        reads see the buffer), then one synced transaction for what must be durable before messages
        that depend on it leave (entries, snapshot, a new term or vote, a membership change), which
        carries the buffer to the store beside its applied index. A Ready that only commits costs no fsync."""
        if hop_trace.ON:
            hop_trace.mark("ready")
        now = self.clock.monotonic()
        if rd.soft_state is not None:
            self._on_soft_state(rd)
        self.lease_clock.note_sent(rd.round_sent, self.clock.monotonic_ns())
        self.stamps.round_sent(rd.round_sent, self.node.raft_log.committed)
        member_changes = self.members.changes_in(rd.committed_entries)
        must_sync = self._must_sync(rd, member_changes)
        if rd.messages and must_sync:  # they leave during this Ready's fsync
            self.transport.send(self._envelopes(rd.messages))
        if self.is_leader and rd.entries:
            self.lag.clock.record(rd.entries[0].index, [e.size() for e in rd.entries], now)
        committed = rd.committed_entries
        results: list[Any] = []
        # A follower's small append syncs on the loop's thread and its answer is on a write's path: what
        # it also commits (the write before, whose commit index came with this append) is applied after
        # the answer has left. It has no writers to answer, and its buffer reaches the store with the
        # next synced transaction or flush, as any applied entry's does.
        apply_after = bool(committed) and must_sync and not member_changes and self._sync_inline(rd)
        if committed and rd.snapshot is None and not apply_after:
            results = self._apply(rd)
            if not member_changes:
                self._after_apply(rd, results, member_changes)
        if must_sync:
            members = self.members.encode_after(member_changes) if member_changes else None
            # The log records are encoded here: a thread running Python waits for the GIL while the loop
            # serves gRPC (benchmarks/README.md), so the I/O thread only writes and fsyncs.
            records = self.store.encode_entries(rd.entries) if rd.entries else None
            need = 3 * sum(len(k) + len(v) for k, v in records) if records else 0
            await self._persist(self._persist_timed, rd.hard_state, rd.entries, rd.snapshot, members, records,
                                need=need, inline=self._sync_inline(rd))
            if hop_trace.ON:
                hop_trace.mark("sync.back")
        elif rd.hard_state is not None:
            self.store.note_hard_state(rd.hard_state)
        if rd.strip_to and self.node.is_witness():
            self.store.strip_payloads(rd.strip_to)
        if rd.snapshot is not None:
            self.applied = rd.snapshot.meta.index
            self.members.replace_from_snapshot(self.store.snapshot_members())
            self._check_role()
            self._sync_transport_peers()
            if self.identity is not None:
                self.identity.members_changed([])
            log.info("installed snapshot", index=rd.snapshot.meta.index, term=rd.snapshot.meta.term)
            for listener in self.snapshot_listeners:
                listener(rd.snapshot.meta.index)
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
            self.waiters.release_persisted(self._persisted_index, {e.index: e.term for e in rd.entries})
        if rd.messages and not must_sync:
            # Nothing waited between the top of this Ready and here: handed over after its writers were
            # answered, their tasks run before the peer senders (a lone write's answer does not wait
            # for two peer batches of commit notices to be encoded and written). Order kept: these
            # still go before the messages that had to wait for durability.
            self.transport.send(self._envelopes(rd.messages))
        if rd.persisted_messages:
            self.transport.send(self._envelopes(rd.persisted_messages))
        if apply_after:
            self._after_apply(rd, self._apply(rd), member_changes)
        if committed and (rd.snapshot is not None or member_changes):
            # After an install (the entries follow the snapshot), or once a membership change is
            # durable with the registry it makes (answered only then).
            self._after_apply(rd, self._apply(rd) if rd.snapshot is not None else results, member_changes)
        if hop_trace.ON and rd.read_states:
            hop_trace.mark("read.state")
        self.reads.answer(rd.read_states)
        self.node.advance(rd)

    @staticmethod
    def _small_ready(rd: Ready) -> bool:
        """At most INLINE_SYNC_ENTRIES entries and INLINE_SYNC_BYTES of their data: a lone writer's Ready."""
        entries = rd.entries
        return len(entries) <= INLINE_SYNC_ENTRIES and sum(len(e.data) for e in entries) <= INLINE_SYNC_BYTES

    def _sync_inline(self, rd: Ready) -> bool:
        """Whether this Ready's synced commit runs on the loop's own thread rather than the I/O thread:
        when it is a follower's small append (it sends nothing before the sync, so the loop has nothing
        to do meanwhile but take the next messages, which wait in the inbox either way) and no other
        thread may be writing to the store (a compaction, a snapshot being staged). Handing a Ready to the
        I/O thread and back costs two thread hand-offs (~100-300 µs on this 2-core machine, see
        benchmarks/README.md), on the path of every write. Busier Readys and the leader's (whose
        appends must leave during its fsync) stay on the I/O thread."""
        return (not rd.messages and rd.snapshot is None and self._small_ready(rd) and not self.is_leader
                and not self.nospace  # the alarm's room checks run on the I/O thread meanwhile
                and not self.compactor.running
                and not getattr(self.transport, "receiving", 0))

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
        entries = rd.committed_entries
        if self.node.is_witness():
            # A witness applies membership only: a payload it holds (sent while a data node was down)
            # is there for a data node's sake, never for a state machine of its own.
            entries = [stripped(e) for e in entries]
        elif (missing := payload_missing(self.cfg.id, self.node.conf, entries)) is not None:
            raise CorruptionError(missing)
        results = self.store.apply(entries, rd.conf_state)
        self.metrics.observe_apply(self.store.last_apply_seconds)
        self._arm_flush_timer()
        return results

    def _check_role(self) -> None:
        """Stop (RoleMismatch) once the configuration names this node in another role than its flag says."""
        mismatch = witness_mismatch(self.cfg.id, self.cfg.witness, self.node.conf)
        if mismatch is not None:
            raise RoleMismatch(mismatch)

    def _after_apply(self, rd: Ready, results: list[Any], member_changes: list[ConfChange]) -> None:
        entries = rd.committed_entries
        self.applied = entries[-1].index
        if member_changes:
            self.members.apply(member_changes, self.node.conf)
            for cc in member_changes:
                if cc.node_id not in self.node.conf.members():
                    self.stamps.forget(cc.node_id)
            self._sync_transport_peers()
            if self.identity is not None:
                self.identity.members_changed(member_changes)
            self._check_role()
        self.waiters.answer(entries, results)
        if hop_trace.ON:
            hop_trace.mark("applied")
        if any(cc.node_id == self.cfg.id for cc in member_changes) and \
                self.cfg.id not in self.node.conf_as_of(self.applied).members():
            self._on_removed(f"applied its own removal at index {self.applied}")
        self.metrics.proposals_committed.inc(len(entries))
        self.metrics.proposals_applied.inc(len(entries))
        self.waiters.release_applied(self.applied)
        self.compactor.maybe_start()

    def _arm_flush_timer(self) -> None:
        """Wake the loop when the write-back buffer must reach the store, should no Ready take it first."""
        if self._flush_timer is not None or self._stopping:
            return
        deadline = self.store.flush_deadline()
        if deadline is None:
            return

        def fire() -> None:
            self._flush_timer = None
            self._wake.set()

        delay = max(0.0, deadline - self.clock.monotonic()) + 0.001
        self._flush_timer = asyncio.get_running_loop().call_later(delay, fire)

    async def _flush_if_due(self) -> None:
        """The write-back buffer alone, in one synced transaction, when it is due (no Ready's commit took
        it in time) or asked for: a background commit, counted apart from the Readies' fsyncs."""
        if not (self.waiters.flush_wanted or self.store.flush_due()):
            return
        await self._persist(self._flush_timed)
        self.waiters.release_flushed()

    def _persist_timed(self, *args: Any) -> None:
        """On the I/O thread; timed there, so the fsync histogram measures the write and not the hand-off."""
        if hop_trace.ON:
            hop_trace.mark("sync.start")
        t0 = time.perf_counter()
        self.store.persist(*args)
        self.metrics.fsync_seconds.observe(time.perf_counter() - t0)
        if hop_trace.ON:
            hop_trace.mark("sync.end")

    def _flush_timed(self) -> None:
        t0 = time.perf_counter()
        self.store.flush()
        self.metrics.backend_commit_seconds.observe(time.perf_counter() - t0)

    def _envelopes(self, msgs: list[Message]) -> list[Message]:
        """The core's messages in their envelopes (transport/envelope.py): a response carries our time
        and applied index; a leader's heartbeat, append or TimeoutNow its send time (the target dates a
        TimeoutNow by it), and a heartbeat or append the newest stamp of the target we vouch for."""
        stamp = self.clock.monotonic_ns()
        applied = self.applied
        out: list[Message] = []
        for m in msgs:
            t = m.type
            if t in RESPONSES:
                out.append(wrap(m, stamp, applied=applied))
            elif t in DATED:
                echo = self.stamps.echo_for(m.to) if t in ECHOED else None
                out.append(wrap(m, stamp, *echo) if echo is not None else wrap(m, stamp))
                if t == MessageType.HEARTBEAT:
                    self.peer_rtt.sent(m, stamp / 1e9)
            else:
                out.append(m)
        return out

    def _take_envelope(self, m: Message) -> None:
        """What a stepped message's envelope says, kept as the core would have: a response's stamp on
        the leader it answered, a leader's echo on the follower of that leader."""
        node = self.node
        if m.term != node.term:
            return
        if m.type in RESPONSES:
            if node.role == StateRole.LEADER:
                self.stamps.heard(m.term, m.frm, stamp_of(m))
        elif m.type in ECHOED and node.leader_id == m.frm:
            self.stamps.note_echo(echo_of(m))

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
            self.reads.fail_rounds(LeadershipLost("leadership changed during the read; retry"))
            self._last_leader = ss.leader
            if ss.leader == self.cfg.id:
                self.lag.start_term(self.clock.monotonic())
        self.metrics.has_leader.set(1 if ss.leader != NONE else 0)
        self.metrics.is_leader.set(1 if ss.role == StateRole.LEADER else 0)
        if ss.role != StateRole.LEADER:
            self.waiters.release_durable(self.match_indexes(), self.clock.monotonic())

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
        if self.waiters.durable_waiting:
            # A deposed leader's waits too: they end at their deadline, which wakes the loop (below).
            self.waiters.release_durable(self.match_indexes(), now)
        for hook in self._any_role_hooks:
            hook()
        if self.is_leader:
            for hook in self._round_hooks:
                hook()
            if now - self._last_lag_check >= 0.5:
                self._last_lag_check = now
                self._compute_lag(now)
        nxt = self.waiters.next_deadline()
        if nxt is not None:
            asyncio.get_running_loop().call_later(max(0.0, nxt - now) + 0.001, self._wake.set)

    def _fail_everything(self, err: Exception) -> None:
        """Answer every waiting request with `err` (nothing of theirs reached the log, or they only read),
        except writes already proposed: those may still commit elsewhere, so they learn the outcome is
        unknown rather than being invited to retry."""
        self.proposals.refuse_all(err)
        self.reads.fail_all(err)
        self.waiters.fail_all(err, OutcomeUnknown(f"{err}; the write was already proposed and may still be applied"))

def bootstrap_store(store: NodeStore, cfg: ServerConfig) -> None:
    """Write the founding members into a brand-new store (a no-op when the store already has a log)."""
    from ..core import ConfState

    if cfg.join or store.log.last_index() > 0:
        return
    conf = ConfState(frozenset(cfg.peers), frozenset(), cfg.witness_ids())
    contexts = {nid: MemberInfo(addr, peer_address=cfg.initial_peer_addresses.get(nid, "")).encode()
                for nid, addr in cfg.peers.items()}
    store.bootstrap(conf, contexts)
