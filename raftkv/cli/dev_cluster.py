"""`raftkv dev`: a local cluster of real `raftkv serve` processes, for trying raftkv out, failovers included.

It is a small supervisor (seed §11.5: recovery attempts are limited, with backoff), acting on the exit
codes of `raftkv serve` (raftkv/exit_codes.py):

- a node that dies of a signal (kill -9, the OOM killer) or exits RETRY (75) is restarted after a backoff
  that doubles with each restart (`--restart-backoff`, at most MAX_BACKOFF_SECONDS), at most
  `--max-restarts` times in any hour; past that it stays down ("gave up") until asked;
- a node that exits NEEDS_OPERATOR (65), USAGE (64), any other code, or 0 is never restarted on its own:
  it needs a person, and restarting it would only repeat the refusal (or hide damage);
- the other nodes keep serving whatever happens to one.

**Control channel.** The supervisor listens on a unix socket, `control.sock` in the dev folder; each
connection sends one line and reads one JSON line back:

    kill ID      SIGKILL node ID and keep it down (no automatic restart) until `restart ID`
    stop ID      SIGTERM node ID (a clean stop), kept down likewise
    restart ID   start node ID again now (after a kill, a stop, a refusal or giving up), backoff reset
    status       every node: pid, state, last exit code, restarts in the last hour

`kv dev kill|stop|restart|status [ID] --data FOLDER` is the client; the same lines typed on the terminal
that runs `raftkv dev` (then Enter) do the same. The supervisor also keeps `dev-state.json` in the folder
up to date with what `status` answers, for scripts that would rather read a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import click

from .. import exit_codes

CONTROL_SOCKET = "control.sock"
STATE_FILE = "dev-state.json"
MAX_BACKOFF_SECONDS = 30.0
HOUR = 3600.0


@dataclass
class DevNode:
    """One `raftkv serve` child and what the supervisor knows of it."""

    id: int
    cmd: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    state: str = "starting"
    """running | restarting (waits out its backoff) | killed | stopped (on request) | needs-operator |
    refused (another code that is not retried) | gave-up (too many restarts this hour) | exited (0)."""
    last_exit: int | None = None
    held: bool = False
    """Kept down on request (kill / stop): not restarted until `restart`."""
    restart_at: float = 0.0
    restarts: deque[float] = field(default_factory=deque)
    """When each automatic restart of the last hour happened (monotonic)."""
    backoff: float = 0.0

    def view(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "state": self.state, "pid": self.proc.pid if self.running else None,
                               "last_exit": self.last_exit, "restarts_last_hour": len(self.restarts),
                               "log": str(self.log_path)}
        if self.state == "restarting":
            out["restart_in_seconds"] = round(max(0.0, self.restart_at - now), 1)
        return out

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def exit_meaning(code: int) -> str:
    """How the supervisor reads an exit code (negative: killed by that signal)."""
    if code < 0:
        return f"killed by signal {-code}"
    return {exit_codes.OK: "stopped", exit_codes.USAGE: "USAGE: fix the command line",
            exit_codes.NEEDS_OPERATOR: "NEEDS_OPERATOR: its data needs a person (see its log)",
            exit_codes.RETRY: "RETRY: a transient fault"}.get(code, f"exit code {code}")


def restartable(code: int) -> bool:
    """A crash (death by a signal) or RETRY is restarted with backoff; nothing else is."""
    return code < 0 or code in exit_codes.RESTARTABLE


class Supervisor:
    def __init__(self, root: Path, nodes: list[DevNode], max_restarts: int, backoff: float) -> None:
        self.root = root
        self.nodes = {n.id: n for n in nodes}
        self.max_restarts = max_restarts
        self.base_backoff = backoff
        self._logs: dict[int, IO[bytes]] = {}
        self.sock_path = root / CONTROL_SOCKET
        with contextlib.suppress(FileNotFoundError):
            self.sock_path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.sock_path))
        self.sock.listen(8)
        self.sock.setblocking(False)

    # -------------------------------------------------------------------------------- children
    def spawn(self, n: DevNode) -> None:
        if n.id not in self._logs:
            self._logs[n.id] = open(n.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        n.proc = subprocess.Popen(n.cmd, stdout=self._logs[n.id], stderr=subprocess.STDOUT, start_new_session=True)
        n.state = "running"
        n.held = False
        self.save_state()

    def kill(self, n: DevNode, sig: int) -> None:
        n.held = True
        if n.running:
            assert n.proc is not None
            os.kill(n.proc.pid, sig)
            try:
                n.last_exit = n.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(n.proc.pid, signal.SIGKILL)
                n.last_exit = n.proc.wait()
        n.state = "killed" if sig == signal.SIGKILL else "stopped"
        self.save_state()

    def restart(self, n: DevNode) -> None:
        if n.running:
            return
        n.backoff = 0.0
        n.restarts.clear()
        self.spawn(n)

    def poll(self, now: float) -> None:
        """Notice exits, decide on restarts, start what is due."""
        for n in self.nodes.values():
            if n.state == "running" and n.proc is not None and n.proc.poll() is not None:
                self._exited(n, n.proc.returncode, now)
            elif n.state == "restarting" and now >= n.restart_at:
                click.echo(f"node {n.id}: restarting (attempt {len(n.restarts)} of {self.max_restarts} this hour)")
                self.spawn(n)

    def _exited(self, n: DevNode, code: int, now: float) -> None:
        n.last_exit = code
        click.echo(f"node {n.id} exited: {exit_meaning(code)}; log {n.log_path}", err=True)
        while n.restarts and now - n.restarts[0] > HOUR:
            n.restarts.popleft()
        if code == exit_codes.NEEDS_OPERATOR:
            n.state = "needs-operator"
            click.echo(f"node {n.id}: not restarted (needs an operator); after fixing it: kv dev restart {n.id}",
                       err=True)
        elif not restartable(code):
            n.state = "exited" if code == exit_codes.OK else "refused"
            click.echo(f"node {n.id}: not restarted; when ready: kv dev restart {n.id}", err=True)
        elif len(n.restarts) >= self.max_restarts:
            n.state = "gave-up"
            click.echo(f"node {n.id}: gave up after {self.max_restarts} restarts this hour; kv dev restart {n.id}",
                       err=True)
        else:
            n.backoff = self.base_backoff if n.backoff == 0 else min(MAX_BACKOFF_SECONDS, n.backoff * 2)
            n.restart_at = now + n.backoff
            n.restarts.append(now)
            n.state = "restarting"
            click.echo(f"node {n.id}: restarting in {n.backoff:g}s", err=True)
        self.save_state()

    # -------------------------------------------------------------------------------- control
    def command(self, line: str) -> dict[str, Any]:
        """One control line, answered as a dict (see the module docstring)."""
        words = line.split()
        if not words:
            return {"ok": False, "error": "empty command"}
        verb, args = words[0].lower(), words[1:]
        if verb == "status":
            return {"ok": True, "nodes": self.status()}
        if verb not in ("kill", "stop", "restart") or len(args) != 1 or not args[0].isdigit():
            return {"ok": False, "error": f"unknown command {line.strip()!r}: use kill ID, stop ID, restart ID or status"}
        n = self.nodes.get(int(args[0]))
        if n is None:
            return {"ok": False, "error": f"no node {args[0]} (nodes: {', '.join(map(str, sorted(self.nodes)))})"}
        if verb == "kill":
            self.kill(n, signal.SIGKILL)
        elif verb == "stop":
            self.kill(n, signal.SIGTERM)
        else:
            self.restart(n)
        click.echo(f"node {n.id}: {verb} done ({n.state})")
        return {"ok": True, "node": n.view(time.monotonic())}

    def status(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [n.view(now) for _, n in sorted(self.nodes.items())]

    def save_state(self) -> None:
        tmp = self.root / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps({"nodes": self.status()}, indent=1) + "\n")
        os.replace(tmp, self.root / STATE_FILE)

    def serve_control(self, timeout: float, stdin: IO[str] | None) -> None:
        """Wait up to `timeout` for a control connection or a line on the terminal, and answer it."""
        watch: list[Any] = [self.sock]
        if stdin is not None:
            watch.append(stdin)
        ready, _, _ = select.select(watch, [], [], timeout)
        if self.sock in ready:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                conn = None
            if conn is not None:
                with conn:
                    conn.settimeout(5)
                    try:
                        data = b""
                        while not data.endswith(b"\n") and len(data) < 1024:
                            chunk = conn.recv(1024)
                            if not chunk:
                                break
                            data += chunk
                        reply = self.command(data.decode(errors="replace"))
                        conn.sendall((json.dumps(reply) + "\n").encode())
                    except OSError:
                        pass
        if stdin is not None and stdin in ready:
            line = stdin.readline()
            if line.strip():
                reply = self.command(line)
                if not reply["ok"]:
                    click.echo(reply["error"], err=True)
                elif "nodes" in reply:
                    for v in reply["nodes"]:
                        click.echo(f"  node {v['id']}: {v['state']}  pid {v['pid'] or '-'}  last exit "
                                   f"{v['last_exit'] if v['last_exit'] is not None else '-'}  restarts/hour "
                                   f"{v['restarts_last_hour']}")

    def shutdown(self) -> None:
        for n in self.nodes.values():
            if n.running:
                assert n.proc is not None
                os.kill(n.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for n in self.nodes.values():
            if n.proc is None:
                continue
            try:
                n.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(n.proc.pid, signal.SIGKILL)
                n.proc.wait()
        for f in self._logs.values():
            f.close()
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.sock_path.unlink()


def run_dev_cluster(nodes: int, data_dir: str, base_port: int, metrics_base_port: int, fresh: bool,
                    max_restarts: int = 5, restart_backoff: float = 1.0, peer_base_port: int = 0) -> int:
    """`peer_base_port`: node i's TCP peer port is this + i - 1 (0: none, peers use gRPC streams)."""
    if nodes < 1:
        click.echo("Error: --nodes must be >= 1", err=True)
        return 1
    root = Path(data_dir).resolve()
    if fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    if len(str(root / CONTROL_SOCKET)) > 100:
        click.echo(f"Error: the path {root} is too long for the control socket; use a shorter --data", err=True)
        return 1
    peers = ",".join(f"{i}=127.0.0.1:{base_port + i - 1}" for i in range(1, nodes + 1))
    members = []
    for i in range(1, nodes + 1):
        cmd = [
            sys.executable, "-m", "raftkv.cli.server_main", "serve",
            "--id", str(i), "--data-dir", str(root / f"node{i}"),
            "--listen", f"127.0.0.1:{base_port + i - 1}",
            "--metrics-listen", f"127.0.0.1:{metrics_base_port + i - 1}",
            "--peers", peers, "--log-format", "json",
        ]
        if peer_base_port:
            cmd += ["--peer-listen", f"127.0.0.1:{peer_base_port + i - 1}", "--initial-peer-addresses",
                    ",".join(f"{j}=127.0.0.1:{peer_base_port + j - 1}" for j in range(1, nodes + 1))]
        members.append(DevNode(i, cmd, root / f"node{i}.log"))
    try:
        sup = Supervisor(root, members, max_restarts, restart_backoff)
    except OSError as e:
        click.echo(f"Error: cannot open the control socket {root / CONTROL_SOCKET}: {e.strerror}", err=True)
        return 1
    for n in members:
        sup.spawn(n)
    _greet(root, nodes, base_port, metrics_base_port, peer_base_port)

    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    stdin = sys.stdin if sys.stdin is not None and sys.stdin.isatty() else None
    try:
        while not stopping:
            sup.poll(time.monotonic())
            try:
                sup.serve_control(0.2, stdin)
            except InterruptedError:
                continue
    finally:
        sup.shutdown()
        click.echo("all nodes stopped")
    return 0


def _greet(root: Path, nodes: int, base_port: int, metrics_base_port: int, peer_base_port: int = 0) -> None:
    endpoints = ",".join(f"127.0.0.1:{base_port + i}" for i in range(nodes))
    click.echo(f"raftkv dev cluster: {nodes} nodes, data and logs in {root}")
    for i in range(1, nodes + 1):
        peer = f"  peer 127.0.0.1:{peer_base_port + i - 1}" if peer_base_port else ""
        click.echo(f"  node {i}: grpc 127.0.0.1:{base_port + i - 1}{peer}  metrics http://127.0.0.1:{metrics_base_port + i - 1}/metrics"
                   f"  log {root / f'node{i}.log'}")
    click.echo("")
    click.echo("Try, in another terminal (after `source .venv/bin/activate`):")
    click.echo(f"  export KV_ENDPOINTS={endpoints}")
    click.echo("  kv put greeting hello")
    click.echo("  kv get greeting")
    click.echo("  kv status -w table")
    click.echo("  kv put counter 1 --ack sync")
    click.echo(f"  kv get greeting --consistency serializable --endpoints 127.0.0.1:{base_port + nodes - 1}")
    click.echo("")
    click.echo(f"Watch a failover: kv dev kill 1 --data {root}   (then kv status; kv dev restart 1 --data {root})")
    click.echo("Or type `kill 1`, `restart 1`, `status` here, then Enter. A crashed node is restarted with backoff.")
    click.echo("Ctrl-C stops all nodes.")
