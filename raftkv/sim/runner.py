"""Running many seeds and summarising them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .cluster import Cluster, SimOptions, SimResult, default_factory
from .host import NodeFactory


@dataclass(slots=True)
class Summary:
    seeds: int = 0
    steps: int = 0
    elections: int = 0
    commits: int = 0
    faults: int = 0
    messages: int = 0
    failures: list[SimResult] = field(default_factory=list)
    elapsed: float = 0.0

    def add(self, r: SimResult) -> None:
        self.seeds += 1
        self.steps += r.steps
        self.elections += r.elections
        self.commits += r.commits
        self.faults += r.faults
        self.messages += r.messages
        if r.violation is not None:
            self.failures.append(r)

    def line(self, nodes: int) -> str:
        rate = self.seeds / self.elapsed if self.elapsed else 0.0
        return (f"seeds={self.seeds} nodes={nodes} steps={self.steps} elections={self.elections} "
                f"commits={self.commits} faults={self.faults} messages={self.messages} "
                f"violations={len(self.failures)} elapsed={self.elapsed:.1f}s ({rate:.1f} seeds/s)")


def run_seeds(seeds: Iterable[int], base: SimOptions, factory: NodeFactory = default_factory,
              on_result: Callable[[SimResult], None] | None = None, stop_at_first: bool = False) -> Summary:
    summary = Summary()
    t0 = time.perf_counter()
    for seed in seeds:
        opts = SimOptions(**{**{f: getattr(base, f) for f in base.__slots__}, "seed": seed})
        result = Cluster(opts, factory).run()
        summary.add(result)
        if on_result is not None:
            on_result(result)
        if stop_at_first and result.violation is not None:
            break
    summary.elapsed = time.perf_counter() - t0
    return summary
