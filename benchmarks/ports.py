"""Loopback ports for the servers that benchmarks and tests start.

Asking the kernel for port 0 and closing the socket hands out a port from the ephemeral range, the same
range the kernel draws from for outgoing connections: between the pick and the server's bind, another
process's client socket (a node dialling its peers, say) can take it, and the node fails to start with
"Address already in use". So ports are drawn below the ephemeral range (Linux's default starts at
32768; read from /proc when it says otherwise), checked bindable, and never handed out twice by one
process.
"""

from __future__ import annotations

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


def free_port() -> int:
    """A port on 127.0.0.1 that is free now and outside the range the kernel picks client ports from."""
    high = min(_ephemeral_start(), 65536) - 1
    low = max(1024, high - 12_000)
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
