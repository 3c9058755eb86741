"""`raftkv dev`: a local cluster of real `raftkv serve` processes, for trying raftkv out."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click


def run_dev_cluster(nodes: int, data_dir: str, base_port: int, metrics_base_port: int, fresh: bool) -> int:
    if nodes < 1:
        click.echo("Error: --nodes must be >= 1", err=True)
        return 1
    root = Path(data_dir).resolve()
    if fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    peers = ",".join(f"{i}=127.0.0.1:{base_port + i - 1}" for i in range(1, nodes + 1))
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    for i in range(1, nodes + 1):
        log_path = root / f"node{i}.log"
        logf = open(log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        logs.append(logf)
        cmd = [
            sys.executable, "-m", "raftkv.cli.server_main", "serve",
            "--id", str(i), "--data-dir", str(root / f"node{i}"),
            "--listen", f"127.0.0.1:{base_port + i - 1}",
            "--metrics-listen", f"127.0.0.1:{metrics_base_port + i - 1}",
            "--peers", peers, "--log-format", "json",
        ]
        procs.append(subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True))
    endpoints = ",".join(f"127.0.0.1:{base_port + i}" for i in range(nodes))
    click.echo(f"raftkv dev cluster: {nodes} nodes, data and logs in {root}")
    for i in range(1, nodes + 1):
        click.echo(f"  node {i}: grpc 127.0.0.1:{base_port + i - 1}  metrics http://127.0.0.1:{metrics_base_port + i - 1}/metrics"
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
    click.echo("Ctrl-C stops all nodes.")

    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        while not stopping:
            for i, p in enumerate(procs, 1):
                if p.poll() is not None:
                    click.echo(f"node {i} exited with code {p.returncode}; see {root / f'node{i}.log'}", err=True)
                    stopping = True
                    code = 1
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        for f in logs:
            f.close()
        click.echo("all nodes stopped")
    return code
