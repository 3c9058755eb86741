"""NodeHost's views for the services and policies above it: role and leader, the staleness proof and
the lease, who durably holds what, the replication lag of each follower."""

from __future__ import annotations

import structlog

from ..core import RaftNode, StateRole
from .config import ServerConfig
from .errors import NotLeader
from .lag import FollowerLag, LagMonitor
from .lease_clock import LeaseClock
from .members import MemberInfo, MemberRegistry
from .metrics import Metrics
from .ports import Clock
from .staleness import StalenessProof, prove_staleness
from .stamps import StalenessStamps

log = structlog.get_logger("raftkv.host")


class HostViews:
    """Part of NodeHost (host.py): what it shows of itself."""

    cfg: ServerConfig
    node: RaftNode
    clock: Clock
    members: MemberRegistry
    metrics: Metrics
    lease_clock: LeaseClock
    stamps: StalenessStamps
    lag: LagMonitor
    applied: int
    _persisted_index: int

    @property
    def is_leader(self) -> bool:
        return self.node.role == StateRole.LEADER

    @property
    def leader_id(self) -> int:
        return self.node.leader_id

    def leader_address(self) -> str:
        info = self.members.get(self.node.leader_id)
        return info.address if info else ""

    def not_leader(self) -> NotLeader:
        return NotLeader(self.node.leader_id, self.leader_address())

    def last_index(self) -> int:
        return self.node.raft_log.last_index()

    def staleness_proof(self) -> StalenessProof:
        """The bound on the age of this node's state that it can prove now, on its own clock. A leader
        measures from the send time of its newest quorum-confirmed round (with or without --lease-reads),
        a follower from the stamp its leader last echoed."""
        now = self.clock.monotonic_ns()
        if self.is_leader:
            return self.lease_clock.proof(self.node.confirmed_round(), self.applied, now)
        return prove_staleness(self.stamps.freshness, self.applied, now)

    def lease_valid(self) -> bool:
        """May a `lease` read be answered from this node's state now (see lease_clock.py)?"""
        if not (self.cfg.lease_reads and self.node.lease_held()):
            return False
        return self.lease_clock.lease_valid(self.node.confirmed_round(), self.applied, self.clock.monotonic_ns())

    def follower_lags(self) -> list[FollowerLag]:
        if not self.is_leader:
            return []
        return self._compute_lag(self.clock.monotonic())

    def match_indexes(self) -> dict[int, int]:
        """Who durably holds what: followers' match, and our own persisted index."""
        match = self.node.match_indexes()
        match[self.cfg.id] = self._persisted_index
        return match

    def semi_sync_members(self) -> frozenset[int]:
        return self.members.semi_sync_set(self.node.conf, self.cfg.id)

    def sync_members(self) -> frozenset[int]:
        return self.members.sync_set(self.node.conf)

    def member_info(self) -> dict[int, MemberInfo]:
        return self.members.all()

    def _compute_lag(self, now: float) -> list[FollowerLag]:
        st = self.node.status()
        progress = {nid: (p.match, p.next, p.state, p.is_learner) for nid, p in st.progress.items()
                    if nid != self.cfg.id}
        lags, transitions = self.lag.compute(progress, st.last_index, st.commit, now)
        for t in transitions:
            if t.critical:
                log.warning("replication lag critical", follower=t.id, lag_entries=t.lag.lag_entries,
                            flush_lag_seconds=round(t.lag.flush_lag_seconds, 3))
            else:
                log.info("replication lag recovered", follower=t.id, lag_entries=t.lag.lag_entries)
        self.metrics.observe_lag(lags)
        return lags
