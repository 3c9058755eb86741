"""A deterministic cluster simulator over the pure Raft core.

Everything -- message delays and losses, partitions, fsync latency, crashes, client load, membership
changes -- is drawn from one seeded generator, so a seed names a run exactly: a failure found among
thousands of seeds replays step by step with `python -m raftkv.sim --seed S --trace`."""

from .cluster import Cluster, SimOptions, SimResult
from .invariants import Violation

__all__ = ["Cluster", "SimOptions", "SimResult", "Violation"]
