"""Local clusters for benchmarking: raftkv (real `raftkv serve` processes) and etcd (Debian's
`etcd-server`), each on 127.0.0.1 with its own ports and a fresh data directory. Every process is
started here and ended here by its PID."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from .ports import free_port

HERE = Path(__file__).resolve().parent


@dataclass
class Node:
    id: int
    client_address: str
    metrics_url: str = ""
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Cluster(ABC):
    """What the load generator needs from either system."""

    system: str
    root: Path
    nodes: dict[int, Node] = field(default_factory=dict)

    def endpoints(self) -> list[str]:
        return [n.client_address for _, n in sorted(self.nodes.items())]

    def pids(self) -> dict[int, int]:
        return {i: n.pid for i, n in self.nodes.items() if n.alive()}

    @abstractmethod
    def leader_id(self, timeout: float = 30.0) -> int:
        """Each system implements this."""

    # Prometheus series whose _sum/_count tell how each node spent its disk time.
    DISK_SERIES: ClassVar[tuple[str, ...]] = ()
    # Counters reported as their increase over a run.
    COUNTERS: ClassVar[tuple[str, ...]] = ()

    def disk_metrics(self) -> dict[int, dict[str, float]]:
        """{node: {series_sum: s, series_count: n}} scraped from each live node's /metrics."""
        out: dict[int, dict[str, float]] = {}
        for i, n in self.nodes.items():
            if not n.alive() or not n.metrics_url:
                continue
            try:
                with urllib.request.urlopen(n.metrics_url, timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                continue
            vals: dict[str, float] = {}
            for line in text.splitlines():
                name, _, value = line.partition(" ")
                if any(name == f"{s}_sum" or name == f"{s}_count" for s in self.DISK_SERIES) or \
                        name in self.COUNTERS:
                    vals[name] = float(value)
            out[i] = vals
        return out

    def leader_address(self) -> str:
        return self.nodes[self.leader_id()].client_address

    @abstractmethod
    def start_node(self, i: int) -> None:
        """Each system implements this."""

    def start(self) -> Cluster:
        for i in sorted(self.nodes):
            self.start_node(i)
        self.leader_id()
        return self

    def stop_node(self, i: int, kill: bool = False) -> None:
        n = self.nodes[i]
        if not n.alive():
            return
        assert n.proc is not None
        os.kill(n.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            n.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.kill(n.proc.pid, signal.SIGKILL)
            n.proc.wait(10)

    def stop(self) -> None:
        for n in self.nodes.values():
            if n.alive():
                assert n.proc is not None
                os.kill(n.proc.pid, signal.SIGTERM)
        for i in self.nodes:
            self.stop_node(i)

    def data_bytes(self, i: int) -> int:
        d = self.root / f"node{i}"
        return sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) if d.exists() else 0

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


PEER_TRANSPORTS = ("grpc", "tcp")
DEFAULT_PEER_TRANSPORT = "tcp"
PEER_TRANSPORT_ENV = "RAFTKV_BENCH_PEER_TRANSPORT"
"""How benchmark clusters' nodes send each other Raft batches (`--peer-transport`): `tcp` gives every node a
`--peer-listen` port, listed in every founder's `--initial-peer-addresses`; `grpc` gives none."""


def peer_transport() -> str:
    return os.environ.get(PEER_TRANSPORT_ENV) or DEFAULT_PEER_TRANSPORT


RAFTKV_FLAGS_ENV = "RAFTKV_BENCH_FLAGS"
"""More `raftkv serve` flags for every node of every benchmark cluster (`--raftkv-flag`), as a JSON list."""


def raftkv_flags() -> list[str]:
    raw = os.environ.get(RAFTKV_FLAGS_ENV)
    return [str(f) for f in json.loads(raw)] if raw else []


class RaftkvCluster(Cluster):
    DISK_SERIES = ("raftkv_fsync_duration_seconds",)
    COUNTERS = ("raftkv_leader_changes_total",)

    def __init__(self, root: Path, n: int = 3, extra: list[str] | None = None) -> None:
        super().__init__("raftkv", root)
        self.extra = [*raftkv_flags(), *(extra or [])]
        self.peer_spec = ""
        ports = {i: free_port() for i in range(1, n + 1)}
        for i, p in ports.items():
            self.nodes[i] = Node(i, f"127.0.0.1:{p}", f"http://127.0.0.1:{free_port()}/metrics")
        self.peer_spec = ",".join(f"{i}={n.client_address}" for i, n in sorted(self.nodes.items()))
        self.peer_ports = {i: f"127.0.0.1:{free_port()}" for i in self.nodes} if peer_transport() == "tcp" else {}
        root.mkdir(parents=True, exist_ok=True)
        # Batched preloads go through Txn; allow more operations per transaction than the default.
        self.config_file = root / "bench.toml"
        self.config_file.write_text("max_txn_ops = 1024\n")

    def start_node(self, i: int) -> None:
        n = self.nodes[i]
        n.log_path = self.root / f"node{i}.log"
        cmd = [sys.executable, "-m", "raftkv.cli.server_main", "serve", "--config", str(self.config_file),
               "--id", str(i), "--data-dir", str(self.root / f"node{i}"), "--listen", n.client_address,
               "--peers", self.peer_spec, "--log-format", "json",
               "--metrics-listen", n.metrics_url.removeprefix("http://").removesuffix("/metrics"), *self.extra]
        if self.peer_ports:
            cmd += ["--peer-listen", self.peer_ports[i], "--initial-peer-addresses",
                    ",".join(f"{j}={a}" for j, a in sorted(self.peer_ports.items()))]
        with open(n.log_path, "ab") as log:
            n.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _status(self, i: int):  # noqa: ANN202
        from raftkv.client import Client

        addr = self.nodes[i].client_address
        with Client(addr, timeout=1.0) as c:
            return c.status(endpoint=addr, timeout=1.0)

    def leader_id(self, timeout: float = 30.0) -> int:
        from raftkv.client import RaftKVError

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leaders = set()
            try:
                for i, n in self.nodes.items():
                    if n.alive():
                        leaders.add(self._status(i).leader_id)
            except RaftKVError:
                time.sleep(0.1)
                continue
            if len(leaders) == 1 and 0 not in leaders:
                lid = leaders.pop()
                if self.nodes.get(lid) and self.nodes[lid].alive():
                    return lid
            time.sleep(0.1)
        raise RuntimeError(f"raftkv cluster has no agreed leader after {timeout}s; logs in {self.root}")

    def applied(self, i: int) -> int:
        return self._status(i).applied

    def commit_index(self, i: int) -> int:
        return self._status(i).commit


def etcd_binary() -> str:
    """The etcd server binary, installing Debian's etcd-server when it is missing."""
    found = shutil.which("etcd")
    if found:
        return found
    script = HERE / "install_etcd.sh"
    print("etcd not found: installing Debian's etcd-server (benchmarks/install_etcd.sh)", file=sys.stderr)
    subprocess.run(["bash", str(script)], check=True)
    found = shutil.which("etcd")
    if not found:
        raise RuntimeError("etcd-server installed but no `etcd` binary on PATH")
    return found


def etcd_version() -> str:
    try:
        out = subprocess.run([etcd_binary(), "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError, RuntimeError):
        return ""
    return out.splitlines()[0].replace("etcd Version: ", "") if out else ""


class EtcdCluster(Cluster):
    """etcd members on loopback with etcd's defaults (fsync on every commit). The quota is raised so that
    the value-size and key-count scale runs fit; nothing else is tuned."""

    DISK_SERIES = ("etcd_disk_wal_fsync_duration_seconds", "etcd_disk_backend_commit_duration_seconds")
    COUNTERS = ("etcd_server_leader_changes_seen_total",)

    def __init__(self, root: Path, n: int = 3, quota_bytes: int = 8 << 30) -> None:
        super().__init__("etcd", root)
        self.binary = etcd_binary()
        self.quota_bytes = quota_bytes
        self.peer_urls: dict[int, str] = {}
        for i in range(1, n + 1):
            port = free_port()
            self.nodes[i] = Node(i, f"127.0.0.1:{port}", f"http://127.0.0.1:{port}/metrics")
            self.peer_urls[i] = f"http://127.0.0.1:{free_port()}"
        self.initial_cluster = ",".join(f"m{i}={u}" for i, u in sorted(self.peer_urls.items()))
        self.token = f"bench-{os.getpid()}-{int(time.time())}"
        root.mkdir(parents=True, exist_ok=True)
        self._member_ids: dict[int, int] = {}

    def start_node(self, i: int) -> None:
        n = self.nodes[i]
        n.log_path = self.root / f"node{i}.log"
        client_url = f"http://{n.client_address}"
        data = self.root / f"node{i}"
        state = "existing" if data.exists() else "new"
        cmd = [self.binary, "--name", f"m{i}", "--data-dir", str(data),
               "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
               "--listen-peer-urls", self.peer_urls[i], "--initial-advertise-peer-urls", self.peer_urls[i],
               "--initial-cluster", self.initial_cluster, "--initial-cluster-state", state,
               "--initial-cluster-token", self.token, "--quota-backend-bytes", str(self.quota_bytes),
               "--logger", "zap", "--log-level", "warn"]
        with open(n.log_path, "ab") as log:
            n.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _endpoint_status(self) -> list[dict]:
        ctl = shutil.which("etcdctl")
        if ctl is None:
            raise RuntimeError("etcdctl missing (Debian package etcd-client)")
        eps = ",".join(f"http://{n.client_address}" for n in self.nodes.values() if n.alive())
        out = subprocess.run([ctl, "--endpoints", eps, "endpoint", "status", "-w", "json"], capture_output=True,
                             text=True, timeout=10, env={**os.environ, "ETCDCTL_API": "3"})
        if out.returncode != 0 and not out.stdout.strip():
            raise RuntimeError(out.stderr.strip())
        return json.loads(out.stdout or "[]")

    def leader_id(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                sts = self._endpoint_status()
            except (RuntimeError, ValueError, subprocess.SubprocessError) as e:
                last = str(e)
                time.sleep(0.2)
                continue
            by_member = {}
            for st in sts:
                addr = st["Endpoint"].removeprefix("http://")
                i = next(i for i, n in self.nodes.items() if n.client_address == addr)
                by_member[st["Status"]["header"]["member_id"]] = i
            leaders = {st["Status"].get("leader") for st in sts}
            alive = sum(1 for n in self.nodes.values() if n.alive())
            if len(sts) == alive and len(leaders) == 1:
                lead = leaders.pop()
                if lead in by_member:
                    return by_member[lead]
            time.sleep(0.2)
        raise RuntimeError(f"etcd cluster has no agreed leader after {timeout}s ({last}); logs in {self.root}")

    def revisions(self) -> dict[int, int]:
        out = {}
        for st in self._endpoint_status():
            addr = st["Endpoint"].removeprefix("http://")
            i = next(i for i, n in self.nodes.items() if n.client_address == addr)
            out[i] = int(st["Status"]["header"]["revision"])
        return out


class FloorCluster(Cluster):
    """One `benchmarks.floor_server` process: the KV service with methods that do nothing (the gRPC floor)."""

    def __init__(self, root: Path) -> None:
        super().__init__("floor", root)
        self.nodes[1] = Node(1, f"127.0.0.1:{free_port()}")
        root.mkdir(parents=True, exist_ok=True)

    def start_node(self, i: int) -> None:
        n = self.nodes[i]
        n.log_path = self.root / f"node{i}.log"
        cmd = [sys.executable, "-m", "benchmarks.floor_server", "--listen", n.client_address]
        with open(n.log_path, "ab") as log:
            n.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                      cwd=HERE.parent)

    def leader_id(self, timeout: float = 30.0) -> int:
        import grpc

        ch = grpc.insecure_channel(self.nodes[1].client_address)
        try:
            grpc.channel_ready_future(ch).result(timeout=timeout)
        finally:
            ch.close()
        return 1


def make_cluster(system: str, root: Path, nodes: int, extra: list[str] | None = None) -> Cluster:
    if system == "floor":
        return FloorCluster(root)
    if system == "raftkv":
        return RaftkvCluster(root, nodes, extra)
    if system == "etcd":
        return EtcdCluster(root, nodes)
    raise ValueError(f"unknown system {system!r}")
