"""CPU time and memory of a process, read from /proc (Linux), so the cost of each server is measured
by the kernel's accounting rather than estimated."""

from __future__ import annotations

import os
from dataclasses import dataclass

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(slots=True, frozen=True)
class ProcSample:
    cpu_s: float  # user + system CPU seconds since the process started (its threads included)
    rss_bytes: int
    hwm_bytes: int  # peak RSS


def sample(pid: int) -> ProcSample | None:
    """None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields after the closing parenthesis are fixed.
    rest = stat[stat.rindex(")") + 2:].split()
    utime, stime = int(rest[11]), int(rest[12])
    rss = hwm = 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    return ProcSample((utime + stime) / TICKS, rss, hwm)


def children_cpu_s(pid: int) -> float:
    """CPU seconds of a process's waited-for children (cutime + cstime)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0.0
    rest = stat[stat.rindex(")") + 2:].split()
    return (int(rest[13]) + int(rest[14])) / TICKS


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return f.read().strip()
    except OSError:
        return ""
