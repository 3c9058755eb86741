"""A semi-sync write that can never be confirmed as asked is refused, never answered as if it were."""

from __future__ import annotations

import asyncio

import pytest

from raftkv.layers.acks import AckLevel, AckRequest, DurabilityWaiters, UnmeetableAck, check_meetable


def test_more_replicas_than_the_semi_sync_set_is_refused() -> None:
    with pytest.raises(UnmeetableAck, match="min_replicas=3.*2 member"):
        check_meetable(AckRequest(AckLevel.SEMI_SYNC, 3), frozenset({2, 3}))
    with pytest.raises(UnmeetableAck, match="none"):
        check_meetable(AckRequest(AckLevel.SEMI_SYNC, 1), frozenset())
    check_meetable(AckRequest(AckLevel.SEMI_SYNC, 2), frozenset({2, 3}))
    check_meetable(AckRequest(AckLevel.MAJORITY, 9), frozenset())


@pytest.mark.asyncio
async def test_a_set_that_shrank_below_the_need_is_answered_degraded_not_semi_sync() -> None:
    waiters = DurabilityWaiters()
    # need 2 of a set of one member that has confirmed: still not the level asked for.
    fut = waiters.add(5, AckLevel.SEMI_SYNC, frozenset({2}), 2, 0.0, {1: 5, 2: 5}, now=0.0)
    out = await asyncio.wait_for(fut, 1)
    assert out.level == AckLevel.MAJORITY and out.degraded and out.confirmed_by == [1, 2]
