"""Proposal batching: writes and membership changes queued by requests, placed into the core together
by the host loop once per round, so one Ready (one fsync, one append per follower) carries them all."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core import ConfChange, ConfChangeRejected, ProposalDropped, RaftNode
from .waiters import IndexWaiters


@dataclass(slots=True)
class Proposal:
    datas: list[bytes]  # proposed together, at consecutive indexes
    placed: asyncio.Future[tuple[int, int]]  # (first index, term)
    # One per entry, registered as result waiters the moment the entries get their indexes: registered any
    # later, an entry committed and applied within the same loop iteration (a one-node cluster) would
    # find nobody waiting. None: the writer does not wait for the apply.
    applied: list[asyncio.Future[Any]] | None = None


@dataclass(slots=True)
class ConfRequest:
    change: ConfChange
    placed: asyncio.Future[tuple[int, int]]
    applied: asyncio.Future[Any]  # registered at placement, as for Proposal


class ProposalQueue:
    def __init__(self) -> None:
        self.writes: deque[Proposal] = deque()
        self.conf_changes: deque[ConfRequest] = deque()

    def __bool__(self) -> bool:
        return bool(self.writes or self.conf_changes)

    def add(self, p: Proposal) -> None:
        self.writes.append(p)

    def add_conf_change(self, r: ConfRequest) -> None:
        self.conf_changes.append(r)

    def place_writes(self, node: RaftNode, waiters: IndexWaiters, not_leader: Callable[[], Exception],
                     on_dropped: Callable[[int], None]) -> None:
        """Every queued write into the core as one batch of consecutive entries."""
        batch = list(self.writes)
        self.writes.clear()
        live = [p for p in batch if not p.placed.done()]
        if not live:
            return
        try:
            first, _ = node.propose_many([d for p in live for d in p.datas])
        except ProposalDropped:
            err = not_leader()
            for p in live:
                p.placed.set_exception(err)
            on_dropped(sum(len(p.datas) for p in live))
            return
        term = node.term
        for p in live:
            p.placed.set_result((first, term))
            if p.applied is not None:
                for i, fut in enumerate(p.applied):
                    waiters.expect_result(first + i, term, fut)
            first += len(p.datas)

    def place_conf_changes(self, node: RaftNode, waiters: IndexWaiters, not_leader: Callable[[], Exception]) -> None:
        while self.conf_changes:
            req = self.conf_changes.popleft()
            if req.placed.done():
                continue
            try:
                idx = node.propose_conf_change(req.change)
            except ProposalDropped:
                req.placed.set_exception(not_leader())
            except ConfChangeRejected as e:
                req.placed.set_exception(e)
            else:
                req.placed.set_result((idx, node.term))
                waiters.expect_result(idx, node.term, req.applied)

    def refuse_all(self, err: BaseException, keep: Callable[[list[bytes]], bool] | None = None) -> None:
        """Queued requests have not reached the log: refuse them with `err` (but the writes `keep` says
        may stay queued, and every membership change)."""
        kept: deque[Proposal] = deque()
        for p in self.writes:
            if p.placed.done():
                continue
            if keep is not None and keep(p.datas):
                kept.append(p)
            else:
                p.placed.set_exception(err)
        self.writes = kept
        for r in self.conf_changes:
            if not r.placed.done():
                r.placed.set_exception(err)
        self.conf_changes.clear()
