"""What the README promises about running a node, checked on real `raftkv serve` processes: exit codes
of refusals, TOML config and the precedence of flags over environment over file, gRPC health and
reflection, the plain-HTTP probes, `kv leader transfer`, `kv snapshot` and `raftkv dev`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from benchmarks.ports import free_port
from raftkv import exit_codes
from raftkv.client import Client, InvalidArgumentError, RaftKVError

from .local_cluster import FAST, LocalCluster
from .observe import wait_for
from .test_cli import kv

SERVE = [sys.executable, "-m", "raftkv.cli.server_main", "serve"]


def _serve(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A `raftkv serve` expected to refuse to start: run to its exit."""
    return subprocess.run([*SERVE, *args], capture_output=True, text=True, timeout=timeout,
                          env=env if env is not None else dict(os.environ))


def _one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("Error: ") and "Traceback" not in r.stderr, r.stderr
    errors = [ln for ln in lines if ln.startswith("Error: ")]
    assert len(errors) == 1, r.stderr
    return errors[0]


# ---------------------------------------------------------------------------------------------- exit codes
def test_data_of_another_node_is_refused_needing_an_operator(cluster: LocalCluster) -> None:
    """README: a node refuses to start, with one line naming the file and the entry, when its data belongs to
    another node; the exit code (65, NEEDS_OPERATOR) tells a supervisor not to restart it."""
    with cluster.client() as c:
        c.put("mine", "3")
    assert cluster.stop(3) == 0
    r = _serve("--id", "2", "--data-dir", str(cluster.root / "node3"), "--listen", f"127.0.0.1:{free_port()}",
               "--peers", cluster.peers, "--log-format", "json", *FAST)
    line = _one_line_error(r)
    assert r.returncode == exit_codes.NEEDS_OPERATOR, (r.returncode, r.stderr)
    assert "belongs to node 3" in line and "data.mdb" in line
    # Nothing was changed: node 3 starts on it again and has its data.
    cluster.start(3)
    cluster.wait_leader()
    with Client(cluster.address(3), timeout=10) as c:
        got = wait_for("node 3 to serve its own data again", lambda: (
            r := c.get("mine", consistency="serializable", endpoint=cluster.address(3))).found and r)
        assert got.kv.value == b"3"


def test_settings_that_make_no_sense_and_addresses_that_cannot_be_bound(tmp_path: Path) -> None:
    r = _serve("--id", "0", "--data-dir", str(tmp_path / "n"), "--listen", f"127.0.0.1:{free_port()}",
               "--peers", "1=127.0.0.1:1")
    _one_line_error(r)
    assert r.returncode == exit_codes.USAGE, (r.returncode, r.stderr)
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: binding fails, which may pass (retry me).
    port = free_port()
    r = _serve("--id", "1", "--data-dir", str(tmp_path / "n1"), "--listen", f"192.0.2.1:{port}",
               "--peers", f"1=192.0.2.1:{port}", "--log-format", "json", *FAST)
    line = _one_line_error(r)
    assert r.returncode == exit_codes.RETRY, (r.returncode, r.stderr)
    assert f"192.0.2.1:{port}" in line


# ---------------------------------------------------------------------------------------------- config
def _key_limit(address: str) -> str:
    """The key limit the node enforces, as its refusal of a 450-byte key states it ("" if accepted)."""
    with Client(address, timeout=10) as c:
        def leads() -> bool:
            try:
                return c.status(endpoint=address, timeout=1).role == "leader"
            except RaftKVError:
                return False  # not listening yet

        wait_for("the node to lead", leads, timeout=30, every=0.1)
        try:
            c.put("k" * 450, "v")
        except InvalidArgumentError as e:
            return str(e)
    return ""


def test_toml_config_with_flags_over_environment_over_file(tmp_path: Path) -> None:
    """README: every flag may come from a TOML file (keys named like the flags) or the environment as
    RAFTKV_SERVE_<FLAG>; flags win. The key limit is set in all three places, then dropped from the
    command line, then from the environment: each time the next source is the one that holds."""
    port, metrics = free_port(), free_port()
    conf = tmp_path / "node.toml"
    conf.write_text(f'id = 1\ndata-dir = "{tmp_path / "data"}"\nlisten = "127.0.0.1:{port}"\n'
                    f'metrics-listen = "127.0.0.1:{metrics}"\npeers = "1=127.0.0.1:{port}"\n'
                    f'tick-ms = 20\nelection-ticks = 10\nlog-format = "json"\nmax-key-bytes = 100\n')
    env = dict(os.environ)
    env["RAFTKV_SERVE_MAX_KEY_BYTES"] = "200"
    cases = [(["--max-key-bytes", "300"], env, "300"), ([], env, "200"),
             ([], {k: v for k, v in env.items() if k != "RAFTKV_SERVE_MAX_KEY_BYTES"}, "100")]
    for flags, environ, limit in cases:
        log = open(tmp_path / f"node-{limit}.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([*SERVE, "--config", str(conf), *flags], stdout=log, stderr=subprocess.STDOUT,
                                env=environ)
        try:
            address = f"127.0.0.1:{port}"
            refusal = _key_limit(address)
            assert f"limit is {limit}" in refusal, (limit, refusal)
            with Client(address, timeout=5) as c:
                assert c.status(endpoint=address).id == 1  # the id, address and peers came from the file
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/livez", timeout=5) as r:  # noqa: S310
                assert r.status == 200
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(15)
            log.close()
        assert code == 0
    conf.write_text(conf.read_text() + "no-such-setting = 1\n")
    r = _serve("--config", str(conf))
    assert r.returncode == exit_codes.USAGE and "no-such-setting" in _one_line_error(r)


# ---------------------------------------------------------------------------------------------- health
def _grpc_health(address: str) -> dict[str, int]:
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        return {name: stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
                for name in ("", "liveness", "readiness")}


def _http(cluster: LocalCluster, i: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{cluster.metrics_ports[i]}{path}", timeout=5) as r:  # noqa: S310
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_grpc_health_reflection_and_http_probes(cluster: LocalCluster) -> None:
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    leader = cluster.wait_leader()
    for i in (1, 2, 3):
        assert wait_for(f"node {i} ready", lambda i=i: _grpc_health(cluster.address(i))["readiness"] == serving)
        assert _grpc_health(cluster.address(i)) == {"": serving, "liveness": serving, "readiness": serving}
        assert _http(cluster, i, "/livez")[0] == 200
        code, body = _http(cluster, i, "/readyz")
        assert code == 200 and json.loads(body)["leader"] == leader
        assert _http(cluster, i, "/health")[0] == 200
    # Reflection: a reflection client lists the services (what grpcurl does).
    with grpc.insecure_channel(cluster.address(1)) as ch:
        services = set(ProtoReflectionDescriptorDatabase(ch).get_services())
    assert {"raftkv.v1.KV", "raftkv.v1.Admin", "grpc.health.v1.Health"} <= services, services
    # A node alone knows no leader: alive, not ready, on gRPC and on HTTP alike.
    alone = next(i for i in (1, 2, 3) if i != leader)
    for i in (1, 2, 3):
        if i != alone:
            cluster.stop(i)
    wait_for("the lone node to report not ready",
             lambda: _grpc_health(cluster.address(alone))["readiness"] == not_serving)
    assert _grpc_health(cluster.address(alone))["liveness"] == serving
    assert _http(cluster, alone, "/livez")[0] == 200
    assert _http(cluster, alone, "/readyz")[0] == 503 and _http(cluster, alone, "/health")[0] == 503
    for i in (1, 2, 3):
        if i != alone:
            cluster.start(i)
    cluster.wait_leader()
    wait_for("readiness back", lambda: _grpc_health(cluster.address(alone))["readiness"] == serving)
    assert _http(cluster, alone, "/readyz")[0] == 200


# ---------------------------------------------------------------------------------------------- kv admin
def test_kv_leader_transfer_and_kv_snapshot(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    target = next(i for i in (1, 2, 3) if i != leader)
    r = kv(cluster, "leader", "transfer", str(target))
    assert r.returncode == 0 and r.stdout.strip() == f"leader is now {target}", r.stderr
    assert cluster.wait_leader() == target
    assert cluster.status(target).role == "leader" and cluster.status(leader).role == "follower"

    follower = next(i for i in (1, 2, 3) if i != target)
    with cluster.client() as c:
        last = 0
        for n in range(30):
            last = c.put(f"snap-{n:02d}", str(n)).meta.index
    cluster.wait_applied(follower, last)
    before = cluster.status(follower).snapshot_index
    r = kv(None, "snapshot", endpoints=cluster.address(follower))
    assert r.returncode == 0 and r.stdout.startswith("snapshot at index "), r.stderr
    index = int(r.stdout.split()[-1])
    assert index >= last > before
    assert cluster.status(follower).snapshot_index == index
    # The node restarts from its snapshot (and what follows it) with everything there.
    cluster.kill(follower)
    cluster.start(follower)
    cluster.wait_leader()
    with Client(cluster.address(follower), timeout=10) as c:
        wait_for("the restarted node to serve", lambda: c.get("snap-29", consistency="serializable",
                                                              endpoint=cluster.address(follower)).found)
        r2 = c.range("snap-", prefix=True, consistency="serializable", endpoint=cluster.address(follower))
        assert [kv_.value for kv_ in r2.kvs] == [str(n).encode() for n in range(30)]
    r = kv(None, "-w", "json", "snapshot", endpoints=cluster.address(follower))
    assert r.returncode == 0 and int(json.loads(r.stdout)["index"]) >= index


# ---------------------------------------------------------------------------------------------- raftkv dev
def _free_run(n: int) -> int:
    """A base port with n consecutive free ports above it."""
    for _ in range(50):
        base = free_port()
        if base + n >= 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no run of free ports")


def _node_pids(data: Path) -> list[int]:
    """`raftkv serve` processes whose command line names a data directory under `data`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in cmd and any(part.startswith(str(data).encode()) for part in cmd):
            out.append(int(entry.name))
    return out


def test_raftkv_dev_runs_a_cluster_until_ctrl_c(tmp_path: Path) -> None:
    base, metrics = _free_run(3), _free_run(3)
    data = tmp_path / "dev"
    proc = subprocess.Popen([sys.executable, "-m", "raftkv.cli.server_main", "dev", "--data", str(data),
                             "--base-port", str(base), "--metrics-base-port", str(metrics),
                             "--peer-base-port", str(_free_run(3))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    endpoints = ",".join(f"127.0.0.1:{base + i}" for i in range(3))
    try:
        with Client(endpoints, timeout=10) as c:
            def put() -> bool:
                try:
                    return bool(c.put("greeting", "hello"))
                except RaftKVError:
                    return False

            wait_for("the dev cluster to take a write", put, timeout=30, every=0.3)
        assert len(_node_pids(data)) == 3
        r = kv(None, "get", "greeting", endpoints=endpoints)
        assert r.returncode == 0 and r.stdout == "greeting\nhello\n", r.stderr
        r = kv(None, "get", "greeting", "--consistency", "serializable", endpoints=f"127.0.0.1:{base + 2}")
        assert r.stdout == "greeting\nhello\n"
        assert _http_ok(f"http://127.0.0.1:{metrics}/metrics")
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"export KV_ENDPOINTS={endpoints}" in out and "all nodes stopped" in out
    assert _node_pids(data) == []
    for i in range(3):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", base + i)) != 0  # nothing listens there any more


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - loopback test URL
        return r.status == 200 and b"raftkv_" in r.read()
