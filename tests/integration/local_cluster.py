"""Real `raftkv serve` processes on loopback for integration tests. Every process is started here and
ended by its PID here; nothing else is touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.ports import free_port
from raftkv.client import Client, RaftKVError
from raftkv.tls import TlsFiles

FAST = ["--tick-ms", "20", "--election-ticks", "10", "--heartbeat-ticks", "1"]


class LocalCluster:
    def __init__(self, root: Path, n: int = 3, extra: list[str] | None = None, tls: TlsFiles | None = None,
                 peer_port_nodes: set[int] | None = None) -> None:
        """`peer_port_nodes`: the nodes that get a TCP peer port (`--peer-listen`, listed in every founder's
        `--initial-peer-addresses`); peers reach the others over gRPC."""
        self.root = root
        self.tls = tls
        """What this harness's own clients present to TLS nodes (the nodes' flags go in `extra`)."""
        self.n = n
        self.extra = extra or []
        self.ports = {i: free_port() for i in range(1, n + 1)}
        self.metrics_ports = {i: free_port() for i in range(1, n + 1)}
        self.peer_ports = {i: free_port() for i in sorted(peer_port_nodes or ())}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.logs: dict[int, Path] = {}

    @property
    def peers(self) -> str:
        return ",".join(f"{i}=127.0.0.1:{p}" for i, p in sorted(self.ports.items()))

    def address(self, i: int) -> str:
        return f"127.0.0.1:{self.ports[i]}"

    @property
    def endpoints(self) -> str:
        return ",".join(self.address(i) for i in sorted(self.ports))

    def command(self, i: int, join: bool = False) -> list[str]:
        cmd = [sys.executable, "-m", "raftkv.cli.server_main", "serve", "--id", str(i),
               "--data-dir", str(self.root / f"node{i}"), "--listen", self.address(i),
               "--metrics-listen", f"127.0.0.1:{self.metrics_ports[i]}", "--log-format", "json", *FAST, *self.extra]
        if i in self.peer_ports:
            cmd += ["--peer-listen", self.peer_address(i)]
        if join:
            return [*cmd, "--join"]
        cmd += ["--peers", self.peers]
        if self.peer_ports:
            cmd += ["--initial-peer-addresses", ",".join(f"{n}={self.peer_address(n)}" for n in sorted(self.peer_ports))]
        return cmd

    def peer_address(self, i: int) -> str:
        return f"127.0.0.1:{self.peer_ports[i]}"

    def start(self, i: int, join: bool = False) -> None:
        self.logs[i] = self.root / f"node{i}.log"
        with open(self.logs[i], "ab") as log:
            self.procs[i] = subprocess.Popen(self.command(i, join), stdout=log, stderr=subprocess.STDOUT)

    def start_all(self) -> LocalCluster:
        for i in sorted(self.ports):
            self.start(i)
        try:
            self.wait_leader()
        except BaseException:  # no leader: the caller gets no cluster to stop, so stop its nodes here
            self.stop_all()
            raise
        return self

    def add_node(self, i: int) -> None:
        self.ports[i] = free_port()
        self.metrics_ports[i] = free_port()

    def signal(self, i: int, sig: int) -> None:
        p = self.procs[i]
        if p.poll() is None:
            os.kill(p.pid, sig)

    def kill(self, i: int) -> None:
        """kill -9: no shutdown code runs."""
        self.signal(i, signal.SIGKILL)
        self.procs[i].wait(10)

    def stop(self, i: int) -> int:
        self.signal(i, signal.SIGTERM)
        try:
            return self.procs[i].wait(15)
        except subprocess.TimeoutExpired:
            self.kill(i)
            return -9

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()

    def client(self, timeout: float = 10.0) -> Client:
        return Client(self.endpoints, timeout=timeout, tls=self.tls)

    def status(self, i: int, timeout: float = 1.0):  # noqa: ANN201
        with Client(self.address(i), timeout=timeout, tls=self.tls) as c:
            return c.status(endpoint=self.address(i), timeout=timeout)

    def wait_leader(self, among: list[int] | None = None, timeout: float = 20.0) -> int:
        """Wait until the live nodes agree on one leader; returns its id."""
        deadline = time.monotonic() + timeout
        nodes = among or [i for i, p in self.procs.items() if p.poll() is None]
        while time.monotonic() < deadline:
            leaders = set()
            try:
                for i in nodes:
                    leaders.add(self.status(i).leader_id)
            except RaftKVError:
                time.sleep(0.05)
                continue
            if len(leaders) == 1 and 0 not in leaders and leaders.pop() in nodes:
                st = self.status(nodes[0])
                return st.leader_id
            time.sleep(0.05)
        raise AssertionError(f"no agreed leader among {nodes} within {timeout}s; logs in {self.root}\n"
                             + self.log_tails(nodes))

    def wait_applied(self, i: int, index: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.status(i).applied >= index:
                    return
            except RaftKVError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"node {i} did not apply index {index} within {timeout}s")

    def log_text(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace") if i in self.logs else ""

    def log_tails(self, nodes: list[int], lines: int = 12) -> str:
        """The last `lines` lines of each node's log, for a failure message: CI keeps the output, not the
        temporary directories the logs are in."""
        return "\n".join(f"--- node {i} ---\n" + "\n".join(ln[:300] for ln in self.log_text(i).splitlines()[-lines:])
                         for i in nodes)
