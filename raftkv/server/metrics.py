"""Prometheus metrics of one node (prefix raftkv_), served with /health on a plaintext HTTP port."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .lag import FollowerLag
from .pressure_metrics import PressureCollector, PressureSource

_FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    def __init__(self, node_id: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.has_leader = Gauge("raftkv_has_leader", "1 if this node knows a leader", registry=r)
        self.is_leader = Gauge("raftkv_is_leader", "1 if this node is the leader", registry=r)
        self.leader_changes = Counter("raftkv_leader_changes", "Leader changes seen by this node", registry=r)
        self.proposals_committed = Counter("raftkv_proposals_committed", "Entries committed and handed to apply",
                                           registry=r)
        self.proposals_applied = Counter("raftkv_proposals_applied", "Entries applied to the state machine",
                                         registry=r)
        self.proposals_pending = Gauge("raftkv_proposals_pending",
                                       "Entries in the leader's log not yet applied on the leader", registry=r)
        self.proposals_failed = Counter("raftkv_proposals_failed",
                                        "Proposals dropped (no leader) or overwritten by a new leader", registry=r)
        self.fsync_seconds = Histogram("raftkv_fsync_duration_seconds",
                                       "Time to persist one Ready: its one synced commit (group commit)",
                                       buckets=_FAST_BUCKETS, registry=r)
        self.backend_commit_seconds = Histogram(
            "raftkv_backend_commit_duration_seconds",
            "Time to flush the write-back buffer on its own, when no Ready's commit took it in time",
            buckets=_FAST_BUCKETS, registry=r)
        self.apply_seconds = Histogram("raftkv_apply_duration_seconds", "Time to apply one batch of entries",
                                       buckets=_FAST_BUCKETS, registry=r)
        self.semi_sync_degradations = Counter("raftkv_semi_sync_degradations",
                                              "Transitions of semi-sync writes into degraded mode", registry=r)
        self.semi_sync_degraded_gauge = Gauge("raftkv_semi_sync_degraded",
                                              "1 while semi-sync writes are degrading to majority", registry=r)
        self.read_index_rounds = Counter("raftkv_read_index_rounds",
                                         "ReadIndex rounds started here; concurrent reads share one", registry=r)
        self.linearizable_reads = Counter("raftkv_linearizable_reads",
                                          "Linearizable reads served here after a ReadIndex round", registry=r)
        self.alarm = Gauge("raftkv_alarm", "1 while an alarm of this type holds on this node (nospace: it cannot "
                           "persist, and refuses writes)", ["type"], registry=r)
        labels = ["peer"]
        self.lag_entries = Gauge("raftkv_replication_lag_entries", "Entries a follower lacks", labels, registry=r)
        self.lag_bytes = Gauge("raftkv_replication_lag_bytes", "Bytes of entries a follower lacks", labels,
                               registry=r)
        self.lag_seconds = Gauge("raftkv_replication_lag_seconds",
                                 "Age of the oldest entry not yet durable on a follower (flush lag)", labels,
                                 registry=r)
        self.replay_lag_seconds = Gauge("raftkv_replication_replay_lag_seconds",
                                        "Age of the oldest committed entry not yet applied on a follower", labels,
                                        registry=r)
        self.lag_critical = Gauge("raftkv_replication_lag_critical", "1 while a follower's lag is critical", labels,
                                  registry=r)
        self._peers: set[str] = set()

    def watch_pressure(self, source: PressureSource) -> None:
        """Export admission control's pressure level and per-resource usage (pressure_metrics.py)."""
        self.registry.register(PressureCollector(source))

    def semi_sync_transition(self, degraded: bool) -> None:
        """Semi-sync writes entered (or left) degraded mode: count entries, show the current state."""
        self.semi_sync_degraded_gauge.set(1 if degraded else 0)
        if degraded:
            self.semi_sync_degradations.inc()

    def observe_lag(self, lags: Iterable[FollowerLag]) -> None:
        seen = set()
        for lg in lags:
            peer = str(lg.id)
            seen.add(peer)
            self.lag_entries.labels(peer).set(lg.lag_entries)
            self.lag_bytes.labels(peer).set(lg.lag_bytes)
            self.lag_seconds.labels(peer).set(lg.flush_lag_seconds)
            self.replay_lag_seconds.labels(peer).set(lg.replay_lag_seconds)
            self.lag_critical.labels(peer).set(1 if lg.critical else 0)
        for gone in self._peers - seen:
            for g in (self.lag_entries, self.lag_bytes, self.lag_seconds, self.replay_lag_seconds,
                      self.lag_critical):
                try:
                    g.remove(gone)
                except KeyError:
                    pass
        self._peers = seen
