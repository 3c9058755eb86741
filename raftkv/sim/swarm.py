"""What one simulated run is made of: the options a caller fixes, and what each seed draws for the rest
(swarm testing: cluster size, spare nodes for membership changes, tick and election settings, message
size and pipeline window, clock rates, lease reads, compaction thresholds, fault mix, client mix).

Clock drift: each node's clock (and its tick timer) runs at its own rate. A leader's lease lasts
`(election_ticks - 1 - lease_drift_ticks)` ticks on its own clock, while a follower that confirmed the
lease refuses other candidates for at least `election_ticks - 1` of its own ticks (README, "lease"). The
lease is safe while the fastest clock runs no more than `(E - 1) / (E - 1 - D)` times as fast as the
slowest: with rates within `1 ± eps`, while `eps <= (K - 1) / (K + 1)` for that ratio K
(`drift_bound`). A seed draws rates within a fraction `drift` of that bound; a drift above 1 plants
clocks beyond it, which the history check must catch through lease reads."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..core.raft import Raft

HOST_FAULTS = ("crash", "partition", "isolate-leader", "drop", "duplicate", "delay", "slow-fsync", "torn-write",
               "flip-bit", "disk-full", "membership", "transfer")
WRITE_LEVELS = ("leader", "majority", "semi_sync", "sync")
READ_LEVELS = ("linearizable", "lease", "serializable", "bounded_staleness", "session")
LEASE_DRIFT_TICKS = 2
"""ServerConfig's default --lease-drift-ticks, which the simulated nodes run with."""


@dataclass(slots=True)
class HostSimOptions:
    seed: int = 1
    duration_s: float = 2.0
    """Simulated seconds of faulty operation before the final heal."""
    nodes: int | None = None
    """Founding voters; None: drawn per seed (1-7)."""
    witnesses: int = 0
    """How many of the founding voters (the highest ids) are witnesses: voters that hold no data."""
    spares: int | None = None
    """Nodes outside the cluster that membership changes may add (as learners, then promote); None: drawn."""
    faults: tuple[str, ...] | None = None
    """None: a mix drawn per seed from HOST_FAULTS."""
    clients: int = 4
    pipelined: int | None = None
    """Clients that keep up to 16 `leader`-level writes in flight (clients.py); None: drawn (0, or 1 in
    about one seed of seven: they make a run several times as long)."""
    keys: int = 3
    max_size_per_msg: int | None = None
    """Entry bytes per append; None: drawn (1 sends one entry per message, as in the paper's Figure 8)."""
    max_inflight_msgs: int | None = None
    """Appends in flight per follower; None: drawn."""
    new_leader_crash: float | None = None
    """Chance that a newly elected leader crashes within a few ticks (with "crash" faults); None: drawn."""
    drift: float | None = None
    """Clock rates within this fraction of the lease drift bound (0: none; > 1: beyond it); None: drawn."""
    rates: tuple[float, ...] | None = None
    """Each node's clock rate, fixed (a planted drift); None: drawn within `drift`."""
    lease_reads: bool | None = None
    read_levels: tuple[str, ...] | None = None
    write_levels: tuple[str, ...] | None = None
    raft_class: type[Raft] | None = None
    """A core of another class (a planted bug), or None for the real one."""
    keep_events: frozenset[int] | None = None
    """Run only these events of the drawn schedule (shrinking); None: all of them."""
    keep_clients: frozenset[int] | None = None
    """Run only these clients (shrinking); None: all of them."""
    trace: bool = False
    trace_keep: int = 200


FIGURE8 = HostSimOptions(nodes=3, spares=0, faults=("crash", "drop", "partition", "isolate-leader", "delay"),
                         max_size_per_msg=1, max_inflight_msgs=1, new_leader_crash=0.5, pipelined=1)
"""Faults that make the paper's Figure 8 schedule likely: new leaders die moments after winning, and
entries travel one per message, so a majority can hold an old-term entry without the new term's."""


@dataclass(slots=True)
class Swarm:
    """What one seed drew."""

    nodes: int
    spares: int
    tick_ms: int
    election_ticks: int
    heartbeat_ticks: int
    lease_reads: bool
    snapshot_entries: int
    snapshot_keep: int
    max_size_per_msg: int
    max_inflight_msgs: int
    new_leader_crash: float
    pipelined: int
    drift: float
    rates: tuple[float, ...]
    """Clock rate of node i+1."""
    faults: tuple[str, ...]
    write_levels: tuple[str, ...]
    read_levels: tuple[str, ...]
    witnesses: int = 0
    """Founding voters that are witnesses (the highest ids); fixed by the options, never drawn."""

    def witness_ids(self) -> frozenset[int]:
        return frozenset(range(self.nodes - self.witnesses + 1, self.nodes + 1))

    def line(self) -> str:
        rates = ",".join(f"{r:.3f}" for r in self.rates)
        witnesses = f" witnesses={self.witnesses}" if self.witnesses else ""
        return (f"nodes={self.nodes}+{self.spares}{witnesses} tick={self.tick_ms}ms election={self.election_ticks} "
                f"heartbeat={self.heartbeat_ticks} lease_reads={self.lease_reads} "
                f"snapshot={self.snapshot_entries}/{self.snapshot_keep} msg={self.max_size_per_msg}B "
                f"inflight={self.max_inflight_msgs} leader_crash={self.new_leader_crash} pipelined={self.pipelined} "
                f"drift={self.drift:.2f} rates={rates} faults={','.join(self.faults) or 'none'} "
                f"writes={','.join(self.write_levels)} reads={','.join(self.read_levels)}")


def drift_bound(election_ticks: int, drift_ticks: int = LEASE_DRIFT_TICKS) -> float:
    """The largest eps such that clocks with rates in [1 - eps, 1 + eps] keep lease reads safe."""
    e = election_ticks - 1
    if e - drift_ticks <= 0:
        return 0.0
    k = e / (e - drift_ticks)
    return (k - 1) / (k + 1)


def draw_swarm(rng: random.Random, opts: HostSimOptions) -> Swarm:
    nodes = opts.nodes or rng.choice([1, 2, 3, 3, 3, 4, 5, 5, 7])
    faults = opts.faults if opts.faults is not None else tuple(f for f in HOST_FAULTS if rng.random() < 0.5)
    writes = opts.write_levels or tuple(w for w in WRITE_LEVELS if rng.random() < 0.6) or ("majority",)
    reads = opts.read_levels or tuple(r for r in READ_LEVELS if rng.random() < 0.6) or ("linearizable",)
    tick_ms, election, heartbeat = rng.choice([5, 10, 20]), rng.choice([5, 10, 20]), rng.choice([1, 1, 2])
    lease = rng.random() < 0.5
    snap_entries, snap_keep = rng.choice([20, 100, 100_000]), rng.choice([2, 10, 50])
    spares = opts.spares if opts.spares is not None else (rng.choice([0, 1, 2]) if "membership" in faults else 0)
    size = opts.max_size_per_msg or rng.choice([1 << 20, 1 << 20, 1 << 20, 64, 1])
    inflight = opts.max_inflight_msgs or rng.choice([256, 64, 4, 1])
    crash = opts.new_leader_crash
    if crash is None:
        crash = rng.choice([0.0, 0.3]) if "crash" in faults else 0.0
    pipelined = opts.pipelined if opts.pipelined is not None else int(rng.random() < 0.15)
    drift = opts.drift if opts.drift is not None else rng.choice([0.0, 0.0, rng.uniform(0.1, 0.9)])
    eps = drift * drift_bound(election)
    rates = tuple(min(3.0, max(0.3, rng.uniform(1 - eps, 1 + eps))) for _ in range(nodes + spares))
    if opts.rates is not None:
        rates = tuple(opts.rates[i] if i < len(opts.rates) else 1.0 for i in range(nodes + spares))
    if opts.lease_reads is not None:
        lease = opts.lease_reads
    if opts.witnesses and opts.witnesses >= nodes:
        raise ValueError(f"{opts.witnesses} witness(es) among {nodes} founding voters leaves no data voter")
    return Swarm(nodes, spares, tick_ms, election, heartbeat, lease, snap_entries, snap_keep, size, inflight, crash,
                 pipelined, drift, rates, faults, writes, reads, opts.witnesses)
