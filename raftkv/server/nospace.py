"""NodeHost's NOSPACE alarm: a synced transaction that fails for lack of space is retried under the
alarm until it succeeds, while writes are refused (retryable) and nothing that depends on it happens."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from ..storage.errors import is_nospace
from .config import ServerConfig
from .errors import LeadershipLost, NoSpace
from .metrics import Metrics
from .ports import Inbox, IOExecutor
from .proposals import ProposalQueue
from .read_rounds import ReadRounds

log = structlog.get_logger("raftkv.host")

NOSPACE_RETRY_SECONDS = 1.0
"""How often a Ready whose persist failed for lack of space is tried again."""


class Stopping(Exception):
    """The node is stopping while a Ready waits for space: the loop ends without persisting it."""


class NoSpaceAlarm:
    """Part of NodeHost (host.py): persisting, and the alarm when the disk is full."""

    cfg: ServerConfig
    io: IOExecutor
    inbox: Inbox
    metrics: Metrics
    proposals: ProposalQueue
    reads: ReadRounds
    nospace: str
    _stopping: bool

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
                    raise Stopping() from None
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
        self.reads.fail_waiting(LeadershipLost(f"node {self.cfg.id} cannot confirm a read point while its "
                                               "NOSPACE alarm holds; retry on another node"))

    def _raise_nospace(self, err: BaseException) -> None:
        if self.nospace:
            return
        self.nospace = str(err) or type(err).__name__
        self.metrics.alarm.labels("nospace").set(1)
        log.error("NOSPACE alarm: cannot persist, writes are refused until space is freed", id=self.cfg.id,
                  error=self.nospace, retry_every_seconds=NOSPACE_RETRY_SECONDS)
        # Writes still queued have not reached the log: refuse them now, retryable, as new ones are.
        self.proposals.refuse_all(self._nospace_error())
