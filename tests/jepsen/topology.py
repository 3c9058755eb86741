"""Network namespaces for the nodes: one namespace per node, each with a veth pair whose outer end is
enslaved to one bridge that carries the bridge address (the clients' side, in the root namespace).

Everything the suite creates is named with its prefix (e.g. `rkvjm1` for node 1's namespace,
`rkvjmbr` for the bridge), so a fresh run can first remove whatever a crashed run left behind without
touching anything else: only namespaces and links whose names start with the prefix, and only processes
running inside those namespaces. iptables rules are only ever added inside the nodes' namespaces, whose
tables belong to the suite alone."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass


class TopologyError(RuntimeError):
    """The machine cannot give us namespaces (not root, no iproute2/iptables, no kernel support)."""


def run(*cmd: str, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise TopologyError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


def iptables_binary() -> str:
    """The iptables variant that works in a fresh namespace here: nf_tables first, then legacy."""
    for name in ("iptables", "iptables-nft", "iptables-legacy"):
        if shutil.which(name):
            p = subprocess.run([name, "-w", "-S", "INPUT"], capture_output=True, text=True, timeout=10)
            if p.returncode == 0:
                return name
    raise TopologyError("no working iptables (install the Debian package iptables)")


def check_environment() -> None:
    """Raise TopologyError with a clear reason when namespaces cannot be used here."""
    if os.geteuid() != 0:
        raise TopologyError("the partition suite needs root (network namespaces, veth pairs, iptables)")
    for tool in ("ip",):
        if not shutil.which(tool):
            raise TopologyError(f"`{tool}` not found (install iproute2)")
    iptables_binary()


@dataclass
class Topology:
    """`n` node namespaces on subnet 10.213.`net`.0/24: bridge .1, node i at .(10 + i)."""

    prefix: str = "rkvjm"
    n: int = 5
    net: int = 1

    def __post_init__(self) -> None:
        if len(self.prefix) > 8:
            raise ValueError("prefix too long for interface names (15 chars)")
        self.iptables = "iptables"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def bridge_ip(self) -> str:
        return f"10.213.{self.net}.1"

    def ns(self, i: int) -> str:
        return f"{self.prefix}{i}"

    def ip(self, i: int) -> str:
        return f"10.213.{self.net}.{10 + i}"

    def setup(self) -> Topology:
        check_environment()
        self.iptables = iptables_binary()
        self.teardown()
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{self.bridge_ip}/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        for i in range(1, self.n + 1):
            ns, outer, inner = self.ns(i), f"{self.prefix}v{i}", f"{self.prefix}p{i}"
            run("ip", "netns", "add", ns)
            run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            run("ip", "link", "set", inner, "netns", ns)
            run("ip", "link", "set", outer, "master", self.bridge)
            run("ip", "link", "set", outer, "up")
            run("ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", inner)
            run("ip", "-n", ns, "link", "set", inner, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        return self

    def exec_prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.ns(i)]

    def iptables_in(self, i: int, *args: str) -> None:
        run(*self.exec_prefix(i), self.iptables, "-w", *args)

    def flush_rules(self, i: int) -> None:
        """Remove every rule in node i's namespace: all of them are the suite's."""
        self.iptables_in(i, "-F", "INPUT")
        self.iptables_in(i, "-F", "OUTPUT")

    def teardown(self) -> None:
        """Idempotent: kill processes inside our namespaces, delete the namespaces and our links."""
        listed = run("ip", "netns", "list", check=False).stdout.split("\n")
        ours = [line.split()[0] for line in listed if line.strip() and _ours(line.split()[0], self.prefix)]
        for ns in ours:
            pids = run("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for ns in ours:
            run("ip", "netns", "del", ns, check=False)
        links = run("ip", "-o", "link", "show", check=False).stdout.splitlines()
        for line in links:
            parts = line.split(":")
            if len(parts) < 2:
                continue
            name = parts[1].strip().split("@")[0]
            if _ours(name, self.prefix):
                run("ip", "link", "del", name, check=False)


def _ours(name: str, prefix: str) -> bool:
    """Names the suite creates: prefix + digits (namespaces), prefix + br / v<i> / p<i> (links)."""
    if not name.startswith(prefix):
        return False
    rest = name[len(prefix):]
    return rest.isdigit() or rest == "br" or (rest[:1] in ("v", "p") and rest[1:].isdigit())
