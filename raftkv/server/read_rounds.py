"""ReadIndex rounds: concurrent linearizable reads share one quorum round. One round is in flight at a
time; reads arriving meanwhile all share the next. A round not answered within `patience` (an election
timeout) is not waited for: CheckQuorum or a new leader will settle it, and later reads should not stall
behind it."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

from ..core import ProposalDropped, RaftNode, ReadState


class ReadRounds:
    def __init__(self, node_id: int, patience: float) -> None:
        self._node_id = node_id
        self._patience = patience
        self._waiting: list[asyncio.Future[int]] = []
        self._rounds: dict[bytes, list[asyncio.Future[int]]] = {}
        self._seq = itertools.count(1)
        self._started = 0.0
        self.issued = 0
        """ReadIndex requests issued to the core (rounds, not individual reads)."""

    def request(self) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        return fut

    def due(self, now: float) -> bool:
        return bool(self._waiting) and (not self._rounds or now - self._started >= self._patience)

    def start(self, node: RaftNode, now: float, not_leader: Callable[[], Exception]) -> bool:
        """Start a round for every read waiting; True if one was issued to the core."""
        self._started = now
        batch, self._waiting = self._waiting, []
        batch = [f for f in batch if not f.done()]
        if not batch:
            return False
        ctx = self._node_id.to_bytes(8, "big") + next(self._seq).to_bytes(8, "big")
        try:
            node.read_index(ctx)
        except ProposalDropped:
            err = not_leader()
            for f in batch:
                f.set_exception(err)
            return False
        self.issued += 1
        self._rounds[ctx] = batch
        return True

    def answer(self, read_states: list[ReadState]) -> None:
        for rs in read_states:
            for fut in self._rounds.pop(rs.context, []):
                if not fut.done():
                    fut.set_result(rs.index)

    def fail_rounds(self, err: BaseException) -> None:
        """The rounds in flight will never be answered (a leader change): fail their reads (retryable)."""
        rounds, self._rounds = self._rounds, {}
        for futs in rounds.values():
            for f in futs:
                if not f.done():
                    f.set_exception(err)

    def fail_waiting(self, err: BaseException) -> None:
        reads, self._waiting = self._waiting, []
        for f in reads:
            if not f.done():
                f.set_exception(err)

    def fail_all(self, err: BaseException) -> None:
        self.fail_waiting(err)
        self.fail_rounds(err)
