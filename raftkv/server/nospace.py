"""NodeHost's NOSPACE alarm: a synced transaction that fails for lack of space is retried under the
alarm until it succeeds, while writes that add data are refused (retryable; deletes are taken) and
nothing that depends on it happens. A disk reserve (storage/disk_space.py) is released on a full disk,
and each synced write is tried only with headroom for it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from ..core import RaftNode
from ..storage.commands import adds_bytes, decode
from ..storage.errors import is_map_full, is_nospace
from .config import ServerConfig
from .errors import LeadershipLost, NoSpace
from .metrics import Metrics
from .ports import DiskRoom, Inbox, IOExecutor
from .proposals import ProposalQueue
from .read_rounds import ReadRounds

log = structlog.get_logger("raftkv.host")

NOSPACE_RETRY_SECONDS = 1.0
"""How often a Ready whose persist failed for lack of space is tried again."""


def adds_data(data: bytes) -> bool:
    """Whether a proposed command may store more bytes (anything undecodable counts as if it did)."""
    try:
        return adds_bytes(decode(data))
    except ValueError:
        return True


class Stopping(Exception):
    """The node is stopping while a Ready waits for space: the loop ends without persisting it."""


class NoSpaceAlarm:
    """Part of NodeHost (host.py): persisting, and the alarm when the disk is full."""

    cfg: ServerConfig
    io: IOExecutor
    inbox: Inbox
    node: RaftNode
    metrics: Metrics
    proposals: ProposalQueue
    reads: ReadRounds
    space: DiskRoom
    nospace: str
    stalled: bool
    _nospace_map: bool
    _room_task: asyncio.Task[None] | None
    _stopping: bool

    if TYPE_CHECKING:  # the rest of NodeHost, as this part uses it
        @property
        def is_leader(self) -> bool: ...

        @property
        def leader_id(self) -> int: ...

    def _refuse_writes_without_space(self, data: bytes | None = None) -> None:
        """Under the NOSPACE alarm only deletes are taken (`data` None: a membership change, refused), and
        none while a Ready waits for space (nothing is placed in the log then)."""
        if self.nospace and (data is None or self.stalled or adds_data(data)):
            raise self._nospace_error()

    def nospace_message(self) -> str:
        """The NOSPACE alarm in one line, as writes it refuses are told (Status, `kv status`)."""
        return str(self._nospace_error())

    def _nospace_error(self) -> NoSpace:
        takes = "no writes" if self.stalled or self._nospace_map else "deletes only"
        return NoSpace(f"NOSPACE: node {self.cfg.id} cannot persist to its data directory ({self.nospace}); "
                       f"it takes {takes} until space is freed")

    async def _create_reserve(self) -> None:
        try:
            made = await self.io.run(self.space.create_reserve)
        except OSError as e:
            made = False
            log.warning("cannot create the disk reserve", file=str(self.space.reserve), error=str(e))
        if not made:
            log.warning("no room for the disk reserve now; it is created once space allows",
                        file=str(self.space.reserve), bytes=self.cfg.disk_reserve_bytes)

    def _with_room(self, need: int, fn: Callable[..., Any], *args: Any) -> Any:
        """On the I/O thread: a persist step, tried only with room for it on the disk (disk_space.py)."""
        self.space.ensure_room(need)
        return fn(*args)

    def _stall(self, stalled: bool, err: BaseException | None = None) -> None:
        """A Ready waits for space (or no longer): the role gauges say no role meanwhile, since the node
        steps nothing, sends no heartbeat and its peers elect another leader without it knowing."""
        if stalled == self.stalled:
            return
        self.stalled = stalled
        if stalled:
            log.warning("a persist waits for space: this node plays no role until it succeeds", id=self.cfg.id,
                        role_before=self.node.role.name.lower(), error=str(err))
            self.metrics.is_leader.set(0)
            self.metrics.has_leader.set(0)
        else:
            self.metrics.is_leader.set(1 if self.is_leader else 0)
            self.metrics.has_leader.set(1 if self.leader_id else 0)

    def _clear_nospace(self) -> None:
        log.info("NOSPACE alarm cleared: the node persists again and takes writes", id=self.cfg.id)
        self.nospace = ""
        self._nospace_map = False
        self.metrics.alarm.labels("nospace").set(0)

    async def _wait_for_room(self) -> None:
        """While the NOSPACE alarm holds (and no Ready waits for space), look every NOSPACE_RETRY_SECONDS
        whether the filesystem has room again; then re-create the reserve and clear the alarm."""
        while self.nospace and not self._stopping:
            await asyncio.sleep(NOSPACE_RETRY_SECONDS)
            if self.stalled or self._nospace_map or not self.nospace or self._stopping:
                continue
            try:
                room = await self.io.run(self.space.restore)
            except OSError as e:
                log.warning("cannot re-create the disk reserve", file=str(self.space.reserve), error=str(e))
                continue
            if room and self.nospace and not self.stalled and not self.space.low:
                self._clear_nospace()

    async def _persist(self, fn: Callable[..., Any], *args: Any, need: int = 0, inline: bool = False) -> Any:
        """Run one persist step (a whole Ready's transaction) on the I/O executor. Without space, the same
        step is retried every NOSPACE_RETRY_SECONDS under the NOSPACE alarm until it succeeds: its
        transaction was aborted whole, and nothing that depends on it (messages sent after persisting,
        such as a follower's acknowledgement of an append, or `advance`) happens before it succeeds,
        while the loop takes no new proposal. Any other failure is raised: the loop cannot go on.
        A step is tried only with room for `need` bytes and some headroom (disk_space.py: the reserve is
        released first); once the reserve is released, the alarm holds until the disk has room again.
        `inline`: run on the loop's own thread (a follower's small append, see NodeHost._sync_inline)."""
        while True:
            try:
                result = self._with_room(need, fn, *args) if inline else await self.io.run(self._with_room, need, fn, *args)
            except Exception as e:
                if not is_nospace(e):
                    raise
                self._raise_nospace(e)
                self._stall(True, e)
                inline = False  # retried on the I/O thread, beside the alarm's own room checks
                await asyncio.sleep(NOSPACE_RETRY_SECONDS)
                if self._stopping:
                    raise Stopping() from None
                self._shed_while_stuck()
                continue
            self._stall(False)
            if self.space.low and not self.nospace:
                self._raise_nospace(OSError(self.space.low))
            elif self.nospace and self._nospace_map:
                self._clear_nospace()  # the map had room for it: nothing else to wait for
            return result

    def _shed_while_stuck(self) -> None:
        """While a Ready waits for space, nothing is stepped: drop what peers sent meanwhile (Raft takes
        lost messages in its stride: the leader sends again) rather than queue it without bound, and
        send linearizable reads elsewhere, since no read round can run here."""
        self.inbox.drop_messages()
        self.reads.fail_waiting(LeadershipLost(f"node {self.cfg.id} cannot confirm a read point while its "
                                               "NOSPACE alarm holds; retry on another node"))

    def _raise_nospace(self, err: BaseException) -> None:
        if self.nospace:
            return
        self.nospace = str(err) or type(err).__name__
        self._nospace_map = is_map_full(err)
        self.metrics.alarm.labels("nospace").set(1)
        log.error("NOSPACE alarm: cannot persist, writes that add data are refused until space is freed",
                  id=self.cfg.id, error=self.nospace, retry_every_seconds=NOSPACE_RETRY_SECONDS)
        if not self._nospace_map and (self._room_task is None or self._room_task.done()):
            self._room_task = asyncio.create_task(self._wait_for_room(), name="raftkv-nospace-room")
        # Writes still queued have not reached the log: refuse them now, retryable, as new ones are
        # (deletes stay queued: the alarm takes them).
        self.proposals.refuse_all(self._nospace_error(), keep=lambda datas: not any(adds_data(d) for d in datas))
