"""What one benchmark run is: the system, the workload and its bounds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

WRITE_ACKS = ("majority", "leader", "semi_sync", "sync")
READ_LEVELS = ("linearizable", "lease", "serializable", "bounded_staleness", "session")
# etcd has one write path (a committed Put) and two read levels.
ETCD_MODES = {"write-majority", "read-linearizable", "read-serializable", "mixed"}


def all_modes() -> list[str]:
    return [f"write-{a}" for a in WRITE_ACKS] + [f"read-{r}" for r in READ_LEVELS] + ["mixed"]


@dataclass
class RunSpec:
    system: str                      # raftkv | etcd | floor (benchmarks/floor_server.py: gRPC doing nothing)
    mode: str                        # write-<ack> | read-<consistency> | mixed
    concurrency: int = 64            # operations in flight at once, over all client processes
    nodes: int = 3
    keys: int = 10_000
    key_size: int = 16
    value_size: int = 256
    read_ratio: float = 0.0          # set from mode; mixed = 0.9
    duration_s: float = 10.0         # bound in time ...
    max_ops: int = 2_000_000         # ... and in operations
    procs: int = 2                   # client processes
    client: str = "batch"            # raftkv client path: unary (one RPC per op) | batch (coalesced Batch RPC)
    #                                  | etcd (etcd's v3 API, the driver etcd gets)
    read_target: str = "all"         # reads spread over all nodes, or sent to the leader only
    op_timeout_s: float = 5.0
    endpoints: list[str] = field(default_factory=list)
    leader: str = ""
    seed: int = 1

    def __post_init__(self) -> None:
        if self.mode == "mixed":
            self.read_ratio = 0.9
        elif self.mode.startswith("read-"):
            self.read_ratio = 1.0
        elif self.mode.startswith("write-"):
            self.read_ratio = 0.0
        else:
            raise ValueError(f"unknown mode {self.mode!r}; choose from {', '.join(all_modes())}")
        if self.system in ("etcd", "floor") and self.mode not in ETCD_MODES:
            raise ValueError(f"{self.system} has no mode {self.mode!r}")
        self.procs = max(1, min(self.procs, self.concurrency))

    @property
    def ack(self) -> str:
        return self.mode.removeprefix("write-") if self.mode.startswith("write-") else "majority"

    @property
    def consistency(self) -> str:
        return self.mode.removeprefix("read-") if self.mode.startswith("read-") else "linearizable"

    @property
    def label(self) -> str:
        if self.system == "etcd":
            return f"etcd {self.mode}"
        return f"{self.system}[{self.client}] {self.mode}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["label"] = self.label
        return d
