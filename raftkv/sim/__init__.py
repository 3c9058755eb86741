"""Deterministic simulators, two of them:

- host_run.py: the real NodeHost and the layers above it (ack and read policies, sessions) over
  simulated time (loop.py), a simulated network and fault-injecting in-memory disks (world.py), with
  simulated clients whose histories are checked after each run (history.py); swarm parameters per seed.
- cluster.py: the pure Raft core alone, stepped under a small host of its own (host.py), for the
  per-step Raft invariants over many thousands of Figure-8 schedules a second.

Everything -- message delays and losses, partitions, fsync latency, crashes, client load, membership
changes -- is drawn from one seeded generator, so a seed names a run exactly: a failure found among
thousands of seeds replays with `python -m raftkv.sim [--host] --seed S --trace`."""

from .cluster import Cluster, SimOptions, SimResult
from .invariants import Violation

__all__ = ["Cluster", "SimOptions", "SimResult", "Violation"]
