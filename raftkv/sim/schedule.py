"""A run's fault schedule, drawn before the run starts, and delta debugging over it.

Each event has its time, its kind and its own seed for whatever it decides when it happens (which node
crashes, where a partition cuts): leaving events out of a run does not change what the others draw, so a
subset of a failing schedule is a meaningful smaller experiment. `ddmin` (Zeller and Hildebrandt,
"Simplifying and Isolating Failure-Inducing Input", 2002) finds a 1-minimal subset that still fails."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(slots=True, frozen=True)
class Event:
    number: int
    at_s: float
    kind: str
    seed: int

    def line(self) -> str:
        return f"#{self.number:<3d} at {self.at_s * 1000:8.2f} ms  {self.kind}"


def draw_schedule(rng: random.Random, faults: tuple[str, ...], duration_s: float) -> list[Event]:
    """Faults every 50-300 ms of simulated time, each one of `faults` or a heal."""
    events: list[Event] = []
    if not faults:
        return events
    t = 0.0
    while True:
        t += rng.uniform(0.05, 0.3)
        if t >= duration_s:
            return events
        events.append(Event(len(events), t, rng.choice((*faults, "heal")), rng.getrandbits(32)))


def ddmin(items: Sequence[T], fails: Callable[[list[T]], bool], max_tests: int = 200) -> list[T]:
    """A 1-minimal sublist of `items` (which fails) for which `fails` still holds: removing any one
    element of the result makes it pass, unless `max_tests` runs out first (then the smallest found)."""
    current = list(items)
    tests = 0

    def test(candidate: list[T]) -> bool:
        nonlocal tests
        tests += 1
        return fails(candidate)

    if current and test([]):
        return []
    n = 2
    while len(current) >= 2 and tests < max_tests:
        size = -(-len(current) // n)
        chunks = [current[i:i + size] for i in range(0, len(current), size)]
        reduced = False
        for chunk in chunks:
            if tests >= max_tests:
                break
            if len(chunks) > 1 and test(chunk):
                current, n, reduced = chunk, 2, True
                break
        if not reduced:
            for chunk in chunks:
                if tests >= max_tests:
                    break
                rest = [x for x in current if x not in chunk]
                if test(rest):
                    current, n, reduced = rest, max(n - 1, 2), True
                    break
        if not reduced:
            if n >= len(current):
                break
            n = min(len(current), 2 * n)
    return current
