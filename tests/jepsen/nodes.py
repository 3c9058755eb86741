"""Real `raftkv serve` processes, one per namespace, started with `ip netns exec` (which execs the
server, so the PID we hold is the server's own). Faults act on those PIDs only: kill -9, SIGSTOP and
SIGCONT, restart on the same data directory, or wipe-and-rejoin under a new member id."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from raftkv.client import Client, RaftKVError

from .topology import Topology
from .witness_topology import WitnessTopology

PORT = 7001
PEER_PORT = 7101
"""Each node's TCP peer port when the cluster runs with TCP peers (`--peer-transport tcp`)."""
TIMING = ["--tick-ms", "20", "--election-ticks", "15", "--heartbeat-ticks", "1"]


class Node:
    """The node living in namespace slot `slot`. Its member id is `slot` until it is removed and added
    back, which gives it a fresh id (a removed id is never reused)."""

    def __init__(self, topo: Topology, slot: int, root: Path, extra: list[str],
                 founding_flags: list[str] | None = None) -> None:
        self.topo, self.slot, self.root, self.extra = topo, slot, root, extra
        self.founding_flags = founding_flags or []
        """Flags of the founding member only (a witness topology's --witnesses/--witness): a node that
        rejoins under a new id is a plain data node."""
        self.id = slot
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.disk: Path | None = None
        """With the disk nemesis: this node's own small filesystem, which holds its data directories."""
        self.peer_tcp = False
        """Peers send this node Raft batches over TCP on `peer_address` (else over gRPC to `address`)."""
        self.founding_peer_ports = ""
        """`--initial-peer-addresses` of the founders (with `peer_tcp`)."""

    @property
    def address(self) -> str:
        return f"{self.topo.ip(self.slot)}:{PORT}"

    @property
    def peer_address(self) -> str:
        """This node's TCP peer port ("" without TCP peers)."""
        return f"{self.topo.ip(self.slot)}:{PEER_PORT}" if self.peer_tcp else ""

    @property
    def data_dir(self) -> Path:
        return (self.disk or self.root) / f"node{self.slot}-id{self.id}"

    @property
    def log_path(self) -> Path:
        return self.root / f"node{self.slot}.log"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        """How the last process of this node ended (None: never started, or still running)."""
        return None if self.proc is None else self.proc.poll()

    def command(self, peers: str | None) -> list[str]:
        """The `raftkv serve` command line: founding (`peers`) or joining (None)."""
        cmd = [*self.topo.exec_prefix(self.slot), sys.executable, "-m", "raftkv.cli.server_main", "serve",
               "--id", str(self.id), "--data-dir", str(self.data_dir), "--listen", self.address,
               "--log-format", "json", *TIMING, *self.extra]
        if self.peer_tcp:
            cmd += ["--peer-listen", self.peer_address]
        if peers is None:
            return cmd + ["--join"]
        cmd += ["--peers", peers] + (self.founding_flags if self.id == self.slot else [])
        if self.founding_peer_ports:
            cmd += ["--initial-peer-addresses", self.founding_peer_ports]
        return cmd

    def start(self, peers: str | None) -> None:
        cmd = self.command(peers)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.paused = False

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        if self.proc is None:
            return
        self.signal(signal.SIGKILL)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.paused = False

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        self.resume()
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()

    def wipe(self, new_id: int) -> None:
        """Forget everything: a removed member comes back as a new, empty one."""
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.id = new_id


class Cluster:
    def __init__(self, topo: Topology, root: Path, extra: list[str] | None = None,
                 witnesses: WitnessTopology | None = None, peer_tcp: bool = False) -> None:
        """`peer_tcp`: every node gets a TCP peer port (`--peer-listen`), in the founders' membership and in
        the `kv members add --peer-addr` of a node added back."""
        self.topo = topo
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.witnesses = witnesses
        self.nodes = {s: Node(topo, s, root, extra or [], witnesses.flags(s) if witnesses else None)
                      for s in range(1, topo.n + 1)}
        for n in self.nodes.values():
            n.peer_tcp = peer_tcp
        ports = ",".join(f"{n.id}={n.peer_address}" for n in self.nodes.values()) if peer_tcp else ""
        for n in self.nodes.values():
            n.founding_peer_ports = ports
        self.next_id = topo.n + 1
        self.founding_peers_original = self.founding_peers
        self._clients: dict[str, Client] = {}

    @property
    def founding_peers(self) -> str:
        return ",".join(f"{n.id}={n.address}" for n in self.nodes.values())

    @property
    def data_slots(self) -> list[int]:
        """Slots of the nodes that hold data (every slot, but a witness topology's witnesses)."""
        return self.witnesses.data_slots if self.witnesses else sorted(self.nodes)

    @property
    def endpoints(self) -> list[str]:
        return [n.address for n in self.nodes.values()]

    def by_id(self, node_id: int) -> Node | None:
        return next((n for n in self.nodes.values() if n.id == node_id), None)

    def start_all(self) -> None:
        peers = self.founding_peers
        for n in self.nodes.values():
            n.start(peers)

    def stop_all(self) -> None:
        for n in self.nodes.values():
            n.resume()
        for n in self.nodes.values():
            n.stop()
        for c in self._clients.values():
            c.close()
        self._clients.clear()

    def client(self, address: str) -> Client:
        c = self._clients.get(address)
        if c is None:
            c = self._clients[address] = Client([address], timeout=1.0)
        return c

    def status(self, node: Node, timeout: float = 0.5):  # noqa: ANN201
        return self.client(node.address).status(endpoint=node.address, timeout=timeout)

    def leader(self, timeout: float = 0.5) -> Node | None:
        """The node that a majority of the reachable nodes name as leader and that says it leads."""
        votes: dict[int, int] = {}
        for n in self.nodes.values():
            if not n.alive() or n.paused:
                continue
            try:
                st = self.status(n, timeout)
            except RaftKVError:
                continue
            if st.leader_id:
                votes[st.leader_id] = votes.get(st.leader_id, 0) + 1
        for lid, count in sorted(votes.items(), key=lambda kv: -kv[1]):
            node = self.by_id(lid)
            if node is None or count < len(self.nodes) // 2 + 1:
                continue
            try:
                if self.status(node, timeout).role == "leader":
                    return node
            except RaftKVError:
                continue
        return None

    def wait_leader(self, timeout: float = 30.0) -> Node:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            node = self.leader()
            if node is not None:
                return node
            time.sleep(0.1)
        # The runner records the nodes' stacks for any failed run (runner._record_failure); the message
        # carries what each node said, since CI keeps the output and not the logs.
        raise AssertionError(f"no leader within {timeout}s; what each node said: {self.statuses()}; node logs "
                             f"in {self.root}\n{self.log_tails()}")

    def dump_stacks(self) -> None:
        """Have every running node write its threads' stacks to its log (SIGUSR1), for a failure's record."""
        for n in self.nodes.values():
            n.signal(signal.SIGUSR1)
        time.sleep(1.0)

    def statuses(self, timeout: float = 2.0) -> str:
        """Each node's role, term and leader as its Status answers them now, or why it did not answer (a
        failed election's message: a node whose API is silent while its peers follow it shows here)."""
        out = []
        for n in self.nodes.values():
            if not n.alive():
                out.append(f"{n.id}: not running")
                continue
            try:
                st = self.client(n.address).status(endpoint=n.address, timeout=timeout)
                out.append(f"{n.id}: {st.role} term {st.term} leader {st.leader_id}")
            except RaftKVError as e:
                # The same question from a fresh process, over its own connection: tells a node that does
                # not answer from a connection of this process's that went bad.
                fresh = subprocess.run([sys.executable, "-m", "raftkv.cli.kv", "--endpoints", n.address,
                                        "--command-timeout", str(timeout), "-w", "json", "status"],
                                       capture_output=True, text=True, timeout=timeout + 20, check=False)
                said = (fresh.stdout.strip() or fresh.stderr.strip()).splitlines()[:1]
                out.append(f"{n.id}: {type(e).__name__}: {e} (a fresh `kv status`: exit {fresh.returncode} "
                           f"{said[0][:300] if said else ''})")
        return "; ".join(out)

    def log_tails(self, nodes: list[Node] | None = None, lines: int = 12) -> str:
        """The last `lines` lines of each node's log, for a failure message: CI keeps the output, not the
        temporary directories the logs are in."""
        out = []
        for n in nodes or list(self.nodes.values()):
            try:
                tail = n.log_path.read_text(errors="replace").splitlines()[-lines:]
            except OSError as e:
                tail = [f"(no log: {e})"]
            out.append(f"--- node {n.id} (slot {n.slot}) ---\n" + "\n".join(ln[:300] for ln in tail))
        return "\n".join(out)
