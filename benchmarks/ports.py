"""Loopback ports for the servers that benchmarks and tests start.

Asking the kernel for port 0 and closing the socket hands out a port from the ephemeral range, the same
range the kernel draws from for outgoing connections: between the pick and the server's bind, another
process's client socket (a node dialling its peers, say) can take it, and the node fails to start with
"Address already in use". So ports are drawn below the ephemeral range (Linux's default starts at
32768; read from /proc when it says otherwise), checked bindable, and never handed out twice by one
process.

Test runs spread over several worker processes (pytest-xdist) must not hand the same port to two workers,
nor let one worker take the port of another's node that is down for a restart: RAFTKV_PORT_SLICE=i/n
(set per worker by tests/conftest.py, inherited by every process it starts) gives process i of n its own
disjoint part of the range.
"""

from __future__ import annotations

import os
import random
import socket

_handed_out: set[int] = set()
_rng = random.Random()


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


SLICE_ENV = "RAFTKV_PORT_SLICE"
SLICE_MARGIN = 16
"""Ports left unused at the top of each slice: callers may take a short run above a port (`raftkv dev`)."""


def _slice(low: int, high: int) -> tuple[int, int]:
    """The part of [low, high] that RAFTKV_PORT_SLICE=i/n gives this process (all of it when unset)."""
    spec = os.environ.get(SLICE_ENV, "")
    if not spec:
        return low, high
    try:
        index, count = (int(x) for x in spec.split("/"))
    except ValueError:
        raise RuntimeError(f"{SLICE_ENV}={spec!r}: expected INDEX/COUNT, e.g. 0/2") from None
    if not 0 <= index < count:
        raise RuntimeError(f"{SLICE_ENV}={spec!r}: INDEX must be in 0..COUNT-1")
    size = (high - low + 1) // count
    start = low + index * size
    return start, start + size - 1 - SLICE_MARGIN


def free_port() -> int:
    """A port on 127.0.0.1 that is free now and outside the range the kernel picks client ports from."""
    high = min(_ephemeral_start(), 65536) - 1
    low, high = _slice(max(1024, high - 12_000), high)
    for _ in range(1000):
        port = _rng.randint(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {low}-{high}")
