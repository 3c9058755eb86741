"""The transport's inbox: what peers sent, queued for the host to pull between Readys (hashicorp/raft's
`Transport.Consumer()`). The transport only puts; the host only takes. Neither holds the other, so
they are built apart and handed to each other by whoever wires the node (server/lifecycle.py, or the
simulator). Kept free of gRPC so the simulator's network fills the same inbox."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..core import Message


@dataclass(slots=True)
class SnapshotArrival:
    """A snapshot message whose records were received and staged. `installed` says when it is installed
    (True), or that the node did not need it (False), so the sender learns the truth."""

    msg: Message
    installed: asyncio.Future[bool]


@dataclass(slots=True)
class PeerReport:
    """The transport's word about a peer: `unreachable`, a `snapshot` sent to it and its fate (`ok`), or
    a `refused` stream (this node is not a member, says the peer; `reason` says why)."""

    kind: str
    peer: int
    ok: bool = False
    reason: str = ""


class Inbox:
    def __init__(self) -> None:
        self.messages: deque[Message] = deque()
        self.snapshots: list[SnapshotArrival] = []
        self.reports: deque[PeerReport] = deque()
        self._doorbell: Callable[[], None] = lambda: None
        self._admit: Callable[[Message], bool] = lambda m: True

    def set_consumer(self, ring: Callable[[], None], admit: Callable[[Message], bool] | None = None) -> None:
        """The consumer's wake-up, rung whenever something is put (the host loop waits on it), and its
        filter, asked as each message arrives (a check that must date the arrival, not the taking)."""
        self._doorbell = ring
        if admit is not None:
            self._admit = admit

    # -- the transport's side ------------------------------------------------------------------------
    def message(self, m: Message) -> None:
        if not self._admit(m):
            return
        self.messages.append(m)
        self._doorbell()

    def snapshot(self, m: Message) -> asyncio.Future[bool]:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.snapshots.append(SnapshotArrival(m, fut))
        self.messages.append(m)
        self._doorbell()
        return fut

    def unreachable(self, peer: int) -> None:
        self._report(PeerReport("unreachable", peer))

    def snapshot_status(self, peer: int, ok: bool) -> None:
        self._report(PeerReport("snapshot", peer, ok))

    def refused(self, peer: int, reason: str) -> None:
        self._report(PeerReport("refused", peer, reason=reason))

    def _report(self, r: PeerReport) -> None:
        self.reports.append(r)
        self._doorbell()

    # -- the host's side ------------------------------------------------------------------------------
    def take_snapshots(self) -> list[SnapshotArrival]:
        got, self.snapshots = self.snapshots, []
        return got

    def drop_messages(self) -> None:
        """Forget what peers sent (a node that cannot step: Raft's peers send again)."""
        self.messages.clear()
