"""`raftkv serve` exit codes at start, and the `raftkv dev` supervisor acting on them (issue 17 item 6):
a crashed node is restarted with backoff, one that needs an operator is not, `kv dev kill|restart` lets a
newcomer watch a failover while the other nodes keep serving."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from raftkv import exit_codes
from raftkv.cli.kv_maint import dev_call
from raftkv.client import Client, RaftKVError

from .observe import wait_for
from .test_cli import kv
from .test_readme_promises import _free_run


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "raftkv.cli.server_main", "serve", *args],
                          capture_output=True, text=True, timeout=60)


def one_error(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    return lines[0]


def test_a_data_directory_that_cannot_be_created_is_one_line_and_retry() -> None:
    r = serve("--id", "1", "--data-dir", "/proc/raftkv-no-such-dir/data", "--listen", "127.0.0.1:1",
              "--peers", "1=127.0.0.1:1")
    assert r.returncode == exit_codes.RETRY and "/proc/raftkv-no-such-dir" in one_error(r)


def test_a_bad_flag_is_usage() -> None:
    r = serve("--id", "1", "--data-dir", "x", "--peers", "1=nohostport")
    assert r.returncode == exit_codes.USAGE and "HOST:PORT" in one_error(r)


def test_an_unknown_flag_or_a_value_of_the_wrong_type_is_usage_in_one_line() -> None:
    """What click itself refuses: its own exit code 2 and usage text would read as a crash to a supervisor."""
    r = serve("--data-dri", "x")
    assert r.returncode == exit_codes.USAGE and "--data-dri" in one_error(r)
    r = serve("--tick-ms", "fast")
    assert r.returncode == exit_codes.USAGE and "--tick-ms" in one_error(r)


def dev_kv(data: Path, *args: str) -> dict:
    r = kv(None, "-w", "json", "dev", *args, "--data", str(data))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def node_view(data: Path, i: int) -> dict:
    """Through the control socket in-process: polled often, a `kv` process each time would be slow."""
    return next(v for v in dev_call(str(data), "status")["nodes"] if v["id"] == i)


def test_dev_restarts_crashes_not_refusals_and_kills_on_request(tmp_path: Path) -> None:
    base, metrics = _free_run(3), _free_run(3)
    data = tmp_path / "dev"
    proc = subprocess.Popen([sys.executable, "-m", "raftkv.cli.server_main", "dev", "--data", str(data),
                             "--base-port", str(base), "--metrics-base-port", str(metrics),
                             "--peer-base-port", str(_free_run(3)),
                             "--restart-backoff", "0.2", "--max-restarts", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    endpoints = ",".join(f"127.0.0.1:{base + i}" for i in range(3))
    try:
        with Client(endpoints, timeout=10) as c:
            def put(key: str) -> bool:
                try:
                    return bool(c.put(key, "v"))
                except RaftKVError:
                    return False

            wait_for("the dev cluster to take a write", lambda: put("first"), timeout=30, every=0.3)

            def formed() -> bool:
                try:
                    return all(c.status(endpoint=f"127.0.0.1:{base + i}").cluster_id for i in range(3))
                except RaftKVError:
                    return False
            # Every node holds the cluster's identity record before the first kill. A node killed before it
            # had the record restarts without a cluster id, and while it campaigns its batches are refused
            # (a known liveness gap, apart from what this test is about).
            wait_for("every node to record the cluster id", formed, timeout=30, every=0.2)
            # kill on request: the node stays down, the other two serve on (a failover if it led).
            v = dev_kv(data, "kill", "1")
            assert v["state"] == "killed" and v["pid"] is None and v["last_exit"] == -signal.SIGKILL
            wait_for("the two others to take a write", lambda: put("while-1-down"), timeout=30, every=0.3)
            assert node_view(data, 1)["state"] == "killed"  # held: not restarted behind the operator's back
            assert dev_call(str(data), "restart 1")["node"]["state"] == "running"

            # a crash (kill -9 from outside) is restarted, with backoff, counted
            pid2 = node_view(data, 2)["pid"]
            subprocess.run(["kill", "-9", str(pid2)], check=True)
            v2 = wait_for("node 2 to be restarted", lambda: (v := node_view(data, 2))["state"] == "running"
                          and v["pid"] not in (None, pid2) and v, timeout=30, every=0.1)
            assert v2["restarts_last_hour"] == 1 and v2["last_exit"] == -signal.SIGKILL

            # a node whose restart exits NEEDS_OPERATOR is never restarted again
            (data / "node3" / "REMOVED").write_text("removed from the cluster by the test\n")
            subprocess.run(["kill", "-9", str(node_view(data, 3)["pid"])], check=True)
            v3 = wait_for("node 3 to be left for an operator",
                          lambda: (v := node_view(data, 3))["state"] == "needs-operator" and v, timeout=30, every=0.1)
            assert v3["last_exit"] == exit_codes.NEEDS_OPERATOR and v3["pid"] is None
            wait_for("nodes 1 and 2 to take a write", lambda: put("after"), timeout=30, every=0.3)
            state = json.loads((data / "dev-state.json").read_text())
            assert [n["state"] for n in state["nodes"]] == ["running", "running", "needs-operator"]
        r = kv(None, "dev", "kill", "9", "--data", str(data))
        assert r.returncode == 1 and "no node 9" in one_error(r)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "node 3: not restarted (needs an operator)" in err and "all nodes stopped" in out


def test_a_setting_of_the_wrong_type_in_the_config_file_is_usage(tmp_path: Path) -> None:
    conf = tmp_path / "node.toml"
    conf.write_text('id = "one"\n')
    r = serve("--config", str(conf), "--data-dir", str(tmp_path / "d"))
    assert r.returncode == exit_codes.USAGE and "'id' must be" in one_error(r)
    assert not (tmp_path / "d").exists()


def test_damaged_lmdb_pages_are_one_line_and_needs_operator(tmp_path: Path) -> None:
    """Pages past LMDB's meta pages damaged (their headers garbled) in a real data.mdb: LMDB itself reports
    MDB_CORRUPTED, which must read as damaged data (65, one line), not a traceback (exit 1) or RETRY."""
    from raftkv.core import ConfState
    from raftkv.storage import LmdbNodeStore

    d = tmp_path / "d"
    store = LmdbNodeStore(d, 1)
    store.bootstrap(ConfState(frozenset({1}), frozenset()), {})
    store.close()
    f = d / "data.mdb"
    data = bytearray(f.read_bytes())
    page = 4096
    for p in range(2, len(data) // page):
        for i in range(p * page + 8, p * page + 16):  # a page header's flags and bounds
            data[i] ^= 0xFF
    f.write_bytes(bytes(data))
    r = serve("--id", "1", "--data-dir", str(d), "--listen", "127.0.0.1:1", "--peers", "1=127.0.0.1:1")
    assert r.returncode == exit_codes.NEEDS_OPERATOR and "damaged" in one_error(r) and str(d) in one_error(r)
