"""Majority arithmetic over a voter set. Learners never appear here: they neither vote nor count."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum


class VoteResult(Enum):
    PENDING = 0
    LOST = 1
    WON = 2


def majority(n: int) -> int:
    return n // 2 + 1


def quorum_index(voters: Iterable[int], acked: Mapping[int, int]) -> int:
    """The largest value that a majority of `voters` have reached in `acked` (missing voters count 0).

    Used for the commit index (acked = match index) and for confirmed leadership rounds.
    """
    values = sorted((acked.get(v, 0) for v in voters), reverse=True)
    if not values:
        return 0
    return values[majority(len(values)) - 1]


def vote_result(voters: Iterable[int], votes: Mapping[int, bool]) -> VoteResult:
    """WON once a majority granted, LOST once a majority can no longer be reached."""
    voters = list(voters)
    granted = sum(1 for v in voters if votes.get(v) is True)
    missing = sum(1 for v in voters if v not in votes)
    need = majority(len(voters))
    if granted >= need:
        return VoteResult.WON
    if granted + missing >= need:
        return VoteResult.PENDING
    return VoteResult.LOST
