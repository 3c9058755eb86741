"""The index-waiter registry: every request waiting on the host for something to happen at a log index.

One place holds them all, so one call answers them and one call fails them:
- results: a writer waits for its entry's apply result (placed at (index, term); a different term there
  means the proposal was lost);
- persisted: a writer waits until its entry is durable in this node's log (the `leader` ack level);
- applied: a reader waits until this node has applied an index (ReadIndex, session tokens);
- durable: a committed write waits until `need` of a set of members hold it durably (match index), or a
  deadline passes (the semi-sync and sync ack levels decide what that means, layers/acks.py);
- flushed: a caller waits for the write-back buffer to reach the store (snapshot_now).

The host calls the `release_*` methods from its loop as the Ready tells it what happened."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ProposalLost


@dataclass(slots=True)
class Durability:
    """What a durability wait found: who holds the index, and whether the deadline passed first."""

    confirmed_by: list[int]
    timed_out: bool


def confirmed_members(index: int, match: Mapping[int, int]) -> list[int]:
    return sorted(nid for nid, m in match.items() if m >= index)


@dataclass(order=True, slots=True)
class _Applied:
    index: int
    seq: int
    future: asyncio.Future[None] = field(compare=False)


@dataclass(slots=True)
class _Durable:
    index: int
    members: frozenset[int]
    need: int
    deadline: float
    future: asyncio.Future[Any] = field(repr=False)
    shape: Callable[[Durability], Any] | None = None


class IndexWaiters:
    def __init__(self, on_lost: Callable[[int], None] = lambda n: None) -> None:
        """`on_lost(n)`: n proposals were found lost (for the failed-proposals counter)."""
        self._on_lost = on_lost
        self._results: dict[int, tuple[int, asyncio.Future[Any]]] = {}
        self._persisted: dict[int, tuple[int, asyncio.Future[None]]] = {}
        self._applied: list[_Applied] = []
        self._seq = itertools.count()
        self._durable: list[_Durable] = []
        self._flushed: list[asyncio.Future[None]] = []

    # -- registering ---------------------------------------------------------------------------------
    def expect_result(self, index: int, term: int, fut: asyncio.Future[Any]) -> None:
        self._results[index] = (term, fut)

    def wait_persisted(self, index: int, term: int, persisted: int) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if persisted >= index:
            fut.set_result(None)
        else:
            self._persisted[index] = (term, fut)
        return fut

    def wait_applied(self, index: int) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._applied, _Applied(index, next(self._seq), fut))
        return fut

    def wait_durable(self, index: int, members: frozenset[int], need: int, deadline: float,
                     match: Mapping[int, int], now: float,
                     shape: Callable[[Durability], Any] | None = None) -> asyncio.Future[Any]:
        """Resolves with what was found (`shape`d, if given: an ack policy's own outcome, set as the wait
        settles)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        w = _Durable(index, members, need, deadline, fut, shape)
        if not self._settle(w, match, now):
            self._durable.append(w)
        return fut

    def wait_flushed(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flushed.append(fut)
        return fut

    # -- views ----------------------------------------------------------------------------------------
    @property
    def flush_wanted(self) -> bool:
        return bool(self._flushed)

    @property
    def durable_waiting(self) -> int:
        return len(self._durable)

    def next_deadline(self) -> float | None:
        return min((w.deadline for w in self._durable), default=None)

    # -- releasing (from the host loop) ---------------------------------------------------------------
    def answer(self, entries: list[Any], results: list[Any]) -> None:
        """Hand each applied entry's result to the writer waiting for it (once: an answered writer's
        waiter is gone)."""
        waiters = self._results
        if not waiters:
            return
        for e, res in zip(entries, results, strict=True):
            waiter = waiters.pop(e.index, None)
            if waiter is None:
                continue
            term, fut = waiter
            if e.term != term:
                self._on_lost(1)
            if fut.done():
                continue
            if e.term != term:
                fut.set_exception(ProposalLost(e.index))
            elif isinstance(res, Exception):
                fut.set_exception(res)
            else:
                fut.set_result(res)

    def release_applied(self, applied: int) -> None:
        heap = self._applied
        while heap and heap[0].index <= applied:
            w = heapq.heappop(heap)
            if not w.future.done():
                w.future.set_result(None)

    def release_persisted(self, persisted: int, terms: Mapping[int, int]) -> None:
        """Entries durable through `persisted`; `terms`: the terms of the entries just written."""
        if not self._persisted:
            return
        for idx in [i for i in self._persisted if i <= persisted]:
            term, fut = self._persisted.pop(idx)
            if fut.done():
                continue
            if terms.get(idx, term) == term:
                fut.set_result(None)
            else:
                fut.set_exception(ProposalLost(idx))
                self._on_lost(1)

    def release_durable(self, match: Mapping[int, int], now: float) -> None:
        """Re-check every durability wait against the newest progress and the clock."""
        if self._durable:
            self._durable = [w for w in self._durable if not self._settle(w, match, now)]

    def release_flushed(self) -> None:
        waiters, self._flushed = self._flushed, []
        for f in waiters:
            if not f.done():
                f.set_result(None)

    @staticmethod
    def _settle(w: _Durable, match: Mapping[int, int], now: float) -> bool:
        if w.future.done():
            return True  # the client went away
        confirmed = confirmed_members(w.index, match)
        if sum(1 for nid in confirmed if nid in w.members) >= w.need:
            found = Durability(confirmed, False)
        elif now >= w.deadline:
            found = Durability(confirmed, True)
        else:
            return False
        w.future.set_result(w.shape(found) if w.shape is not None else found)
        return True

    # -- failing --------------------------------------------------------------------------------------
    def fail_durable(self, unknown: BaseException) -> None:
        for d in self._durable:
            if not d.future.done():
                d.future.set_exception(unknown)
        self._durable = []

    def fail_all(self, err: BaseException, unknown: BaseException) -> None:
        """Fail every waiter: with `unknown` those whose write may still commit (results, persisted,
        durable), with `err` the rest."""
        for _, fut in list(self._results.values()) + list(self._persisted.values()):
            if not fut.done():
                fut.set_exception(unknown)
        self._results.clear()
        self._persisted.clear()
        for w in self._applied:
            if not w.future.done():
                w.future.set_exception(err)
        self._applied = []
        for f in self._flushed:
            if not f.done():
                f.set_exception(err)
        self._flushed = []
        self.fail_durable(unknown)
