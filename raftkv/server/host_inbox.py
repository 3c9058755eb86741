"""NodeHost's intake from its inbox (transport/inbox.py): the messages, snapshot arrivals and peer
reports the transport put there, taken by the loop between Readys; snapshot arrivals answered once the
Ready that installs them is written."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

import structlog

from ..core import Message, RaftNode
from .ports import Clock, Inbox
from .transfer_guard import TransferGuard

log = structlog.get_logger("raftkv.host")


class InboxIntake:
    """Part of NodeHost (host.py): what it takes from its inbox."""

    inbox: Inbox
    node: RaftNode
    clock: Clock
    transfer_guard: TransferGuard
    _snapshots_stepped: list[tuple[bytes, asyncio.Future[bool]]]
    _local_ops: deque  # type: ignore[type-arg]

    if TYPE_CHECKING:  # the rest of NodeHost, as this part uses it
        def peer_refused(self, peer: int, reason: str) -> None: ...

    def deliver(self, msg: Message) -> None:
        """A message from a peer, put in the inbox as the transport does (tests and tools)."""
        self.inbox.message(msg)

    def deliver_snapshot(self, msg: Message) -> asyncio.Future[bool]:
        """A snapshot message whose records were received and staged: stepped like any message. The
        future says when it is installed (True), or that the core did not need it (False: this node held
        everything it covers already), so the sender learns the truth."""
        assert msg.snapshot is not None
        return self.inbox.snapshot(msg)

    def snapshot_status(self, node_id: int, ok: bool) -> None:
        self.inbox.snapshot_status(node_id, ok)

    def peer_unreachable(self, node_id: int) -> None:
        self.inbox.unreachable(node_id)

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
        """The transport's word about peers: unreachable, a snapshot's fate (True once the follower
        installed it or needed none; False when the stream failed, so the core sends another), a refusal."""
        reports = self.inbox.reports
        while reports:
            r = reports.popleft()
            if r.kind == "unreachable":
                self.node.report_unreachable(r.peer)
            elif r.kind == "snapshot":
                self.node.report_snapshot(r.peer, r.ok)
            elif r.kind == "refused":
                self.peer_refused(r.peer, r.reason)

    def _take_snapshot_arrivals(self) -> None:
        self._snapshots_stepped += [(a.msg.snapshot.data, a.installed) for a in self.inbox.take_snapshots()
                                    if a.msg.snapshot is not None]

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
