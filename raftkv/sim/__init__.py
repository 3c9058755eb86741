"""The deterministic simulator: the real NodeHost and the layers above it (ack and read policies,
sessions) over simulated time (loop.py), a simulated network and fault-injecting in-memory disks
(world.py), with simulated clients whose histories are checked after each run (history.py) and Raft's
invariants checked as it runs (invariants.py). Each seed draws its swarm (swarm.py) and its fault schedule
(schedule.py, applied by nemesis.py); a failing seed replays exactly and is shrunk (shrink.py):
`python -m raftkv.sim --seed S`."""

from .host_run import HostSimOptions, HostSimResult, run_host_seed, run_host_seeds
from .invariants import Violation

__all__ = ["HostSimOptions", "HostSimResult", "Violation", "run_host_seed", "run_host_seeds"]
