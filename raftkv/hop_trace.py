"""Opt-in timestamps at each hop of a request's path through a node, for `python -m benchmarks hops`.

Off unless the process starts with RAFTKV_TRACE_HOPS=1; then each hop (an RPC arriving, the host loop
waking, a Ready, a log sync starting and ending, a peer batch written or received, an entry applied, a
reply leaving) appends `(time.monotonic_ns(), name)` to a bounded ring, and the node's plaintext HTTP
port serves and empties it at `/debug/hops`. CLOCK_MONOTONIC is one clock for every process on a
machine, so the benchmark merges the rings of a local cluster's nodes and its own client's timestamps
into one timeline per request: where a lone write or read spends its time, hop by hop.

Off, a hop costs one test of a module attribute (`if hop_trace.ON:` at each call site): nothing is
recorded, and nothing here is on by default in a server.
"""

from __future__ import annotations

import os
import time
from collections import deque

ON = os.environ.get("RAFTKV_TRACE_HOPS", "") not in ("", "0")
"""Whether hops are recorded in this process (read once, at import)."""

RING = 200_000
_events: deque[tuple[int, str]] = deque(maxlen=RING)


def mark(name: str) -> None:
    """Record that this process passed hop `name` now (call only under `if ON:`)."""
    _events.append((time.monotonic_ns(), name))


def drain() -> list[tuple[int, str]]:
    """Every hop recorded since the last drain, oldest first (from the HTTP thread: deque ops are atomic)."""
    out: list[tuple[int, str]] = []
    pop = _events.popleft
    try:
        while True:
            out.append(pop())
    except IndexError:
        return out
