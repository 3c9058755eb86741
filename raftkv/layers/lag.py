"""Replication-lag monitoring, as the layers and the api see it. The bookkeeping lives beside the host
loop that feeds it (server/lag.py: the leader's append times, followers' match and applied indexes);
this module names it for the policies and views above the host."""

from __future__ import annotations

from ..server.lag import AppendClock, FollowerLag, LagMonitor, LagThresholds, LagTransition

__all__ = ["AppendClock", "FollowerLag", "LagMonitor", "LagThresholds", "LagTransition"]
