"""Prometheus metrics of one node (prefix raftkv_), served with /health on a plaintext HTTP port.

Per-RPC metrics (grpc_server_*) live in grpc_metrics.py on the same registry. Gauges of the node's
position (term, indexes, database size) are read when scraped (`watch_node`), in the HTTP thread: they
read plain integers the loop keeps, and the database size from the file and a read transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from .lag import FollowerLag
from .pressure_metrics import PressureCollector, PressureSource

_FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_SNAPSHOT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
SLOW_APPLY_S = 0.1
"""An apply of one batch slower than this is counted as slow (etcd's default warning-apply-duration)."""
ALARMS = ("nospace", "corrupt")
"""Alarm types shown by raftkv_alarm{type}, each at 0 until raised, so an alert on one has a series."""


class Metrics:
    def __init__(self, node_id: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.pressure = PressureCollector()
        """Admission control's gauges; bound to the node's admission control by `watch_pressure`."""
        r.register(self.pressure)
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
        self.lag_unreachable = Gauge("raftkv_replication_follower_unreachable",
                                     "1 while the leader has not heard from a follower for the critical period",
                                     labels, registry=r)
        self._peers: set[str] = set()
        for a in ALARMS:
            self.alarm.labels(a).set(0)
        self.slow_applies = Counter("raftkv_slow_applies", f"Batches whose apply took over {SLOW_APPLY_S} s",
                                    registry=r)
        self.loop_stalls = Counter("raftkv_loop_stalls", "Times this node's event loop did not run for an "
                                   "election timeout or more (server/stall_watch.py)", registry=r)
        self._node_gauges()
        self._peer_metrics()
        self._coordination_metrics()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, CPU seconds, open fds

    def _node_gauges(self) -> None:
        r = self.registry
        self.term = Gauge("raftkv_term", "This node's current Raft term", registry=r)
        self.commit_index = Gauge("raftkv_commit_index", "Highest log index this node knows committed", registry=r)
        self.applied_index = Gauge("raftkv_applied_index", "Highest log index applied to this node's state machine",
                                   registry=r)
        self.last_index = Gauge("raftkv_last_index", "Index of the last entry in this node's log", registry=r)
        self.db_size = Gauge("raftkv_db_total_size_bytes", "Size of the LMDB data file on disk", registry=r)
        self.db_in_use = Gauge("raftkv_db_total_size_in_use_bytes",
                               "Bytes of the LMDB file its databases occupy (the rest is free pages to reuse)",
                               registry=r)

    def _peer_metrics(self) -> None:
        r = self.registry
        peer = ["peer"]
        self.peer_rtt = Histogram("raftkv_peer_round_trip_time_seconds",
                                  "Heartbeat round trip from the leader to a follower and back, through both loops",
                                  peer, buckets=_FAST_BUCKETS, registry=r)
        self.peer_sent_failures = Counter("raftkv_peer_sent_failures",
                                          "Messages to a peer not sent: its stream broke or its queue was full",
                                          peer, registry=r)
        self.heartbeat_failures = Counter("raftkv_heartbeat_send_failures",
                                          "Heartbeats to a peer that were not sent (broken stream, full queue)",
                                          peer, registry=r)
        out = ["peer", "outcome"]
        self.snapshots_sent = Counter("raftkv_snapshot_send", "Snapshot streams sent to a peer, by outcome (ok, failed)",
                                      out, registry=r)
        self.snapshot_send_seconds = Histogram("raftkv_snapshot_send_duration_seconds",
                                               "Time to stream a snapshot to a peer until it answered", peer,
                                               buckets=_SNAPSHOT_BUCKETS, registry=r)
        self.snapshots_received = Counter("raftkv_snapshot_receive",
                                          "Snapshot streams received from a peer, by outcome (ok, failed)", out,
                                          registry=r)
        self.snapshot_receive_seconds = Histogram("raftkv_snapshot_receive_duration_seconds",
                                                  "Time to receive, stage and install a snapshot from a peer", peer,
                                                  buckets=_SNAPSHOT_BUCKETS, registry=r)

    def _coordination_metrics(self) -> None:
        r = self.registry
        self.watches = Gauge("raftkv_watches", "Watches open on this node", registry=r)
        self.watch_events_queued = Gauge("raftkv_watch_events_queued",
                                         "Change events queued on this node for watchers whose streams are full",
                                         registry=r)
        self.watch_events_sent = Counter("raftkv_watch_events_sent", "Change events sent to watchers", registry=r)
        self.watch_slow_cancels = Counter("raftkv_watch_slow_cancels",
                                          "Watch streams ended because a watcher fell too far behind", registry=r)
        self.leases = Gauge("raftkv_leases", "Leases granted and not yet revoked or expired", registry=r)
        self.lease_keepalives = Counter("raftkv_lease_keepalives", "Lease keep-alives renewed by this node (leader)",
                                        registry=r)
        self.spare_promotions = Counter("raftkv_spare_promotions",
                                        "Hot spares promoted to voter in place of a dead voter", registry=r)
        self.lease_expired = Counter("raftkv_lease_expired",
                                     "Leases this node (leader) revoked because their TTL ran out", registry=r)

    def watch_coordination(self, watches: Callable[[], float], queued: Callable[[], float],
                           leases: Callable[[], float]) -> None:
        """Read these when scraped (from the HTTP thread: each must only read)."""
        for gauge, fn in ((self.watches, watches), (self.watch_events_queued, queued), (self.leases, leases)):
            gauge.set_function(_never_raises(fn))

    def watch_node(self, term: Callable[[], float], commit: Callable[[], float], applied: Callable[[], float],
                   last_index: Callable[[], float], db_size: Callable[[], float],
                   db_in_use: Callable[[], float]) -> None:
        """Read these when scraped (from the HTTP thread: each must only read)."""
        for gauge, fn in ((self.term, term), (self.commit_index, commit), (self.applied_index, applied),
                          (self.last_index, last_index), (self.db_size, db_size), (self.db_in_use, db_in_use)):
            gauge.set_function(_never_raises(fn))

    def observe_apply(self, seconds: float) -> None:
        self.apply_seconds.observe(seconds)
        if seconds > SLOW_APPLY_S:
            self.slow_applies.inc()

    def observe_rtt(self, peer: int, seconds: float) -> None:
        self.peer_rtt.labels(str(peer)).observe(seconds)

    # TransportEvents (transport/events.py)
    def send_failed(self, peer: int, messages: int, heartbeats: int) -> None:
        self.peer_sent_failures.labels(str(peer)).inc(messages)
        if heartbeats:
            self.heartbeat_failures.labels(str(peer)).inc(heartbeats)

    def snapshot_sent(self, peer: int, ok: bool, seconds: float) -> None:
        self.snapshots_sent.labels(str(peer), "ok" if ok else "failed").inc()
        self.snapshot_send_seconds.labels(str(peer)).observe(seconds)

    def snapshot_received(self, peer: int, ok: bool, seconds: float) -> None:
        self.snapshots_received.labels(str(peer), "ok" if ok else "failed").inc()
        self.snapshot_receive_seconds.labels(str(peer)).observe(seconds)

    def watch_pressure(self, source: PressureSource) -> None:
        """Export admission control's pressure level and per-resource usage (pressure_metrics.py)."""
        self.pressure.source = source

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
            self.lag_unreachable.labels(peer).set(1 if lg.unreachable else 0)
        for gone in self._peers - seen:
            for g in (self.lag_entries, self.lag_bytes, self.lag_seconds, self.replay_lag_seconds,
                      self.lag_critical, self.lag_unreachable):
                try:
                    g.remove(gone)
                except KeyError:
                    pass
        self._peers = seen


def _never_raises(fn: Callable[[], float]) -> Callable[[], float]:
    """A scrape during shutdown (the store closed) shows 0 rather than failing the whole page."""
    def read() -> float:
        try:
            return float(fn())
        except Exception:  # noqa: BLE001 - see above
            return 0.0
    return read
