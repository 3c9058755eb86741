"""The benchmark harness runs end to end on a tiny load and writes every figure it promises. Speed is
never asserted here: benchmarks print figures, they do not pass or fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_harness_runs_end_to_end_and_writes_results(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks", "run", "--systems", "raftkv", "--modes",
           "write-majority,read-linearizable", "--concurrency", "1", "--duration", "1", "--keys", "50",
           "--procs", "1", "--unary-modes", "", "--raftkv-flag=--log-level=warning", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out,) = list(tmp_path.glob("bench-*"))
    doc = json.loads((out / "results.json").read_text())
    assert doc["meta"]["command"].startswith("python -m benchmarks run")
    assert doc["meta"]["raftkv_flags"] == ["--log-level=warning"]  # and every node ran with it:
    logs = list(out.rglob("node*.log"))
    assert len(logs) == 3 and not any('"event": "node started"' in p.read_text() for p in logs)
    assert doc["meta"]["loadavg_start"]
    assert doc["preload"]["raftkv"]["keys_loaded"] == 50
    runs = doc["runs"]
    assert [r["spec"]["mode"] for r in runs] == ["write-majority", "read-linearizable"]
    for r in runs:
        assert r["ops"] > 0 and r["errors"] == {}
        assert r["throughput_ops_s"] > 0
        for q in ("p50_ms", "p90_ms", "p99_ms", "p999_ms"):
            assert r["latency"][q] > 0
        assert r["latency"]["p50_ms"] <= r["latency"]["p99_ms"] <= r["latency"]["max_ms"]
        assert len(r["nodes"]) == 3 and sum(n["leader"] for n in r["nodes"]) == 1
        for n in r["nodes"]:
            assert n["cpu_s_per_1k_ops"] is not None and n["rss_mb"] > 0
        assert r["loadavg_start"]
    assert runs[0]["writes"] == runs[0]["ops"] and runs[1]["reads"] == runs[1]["ops"]
    md = (out / "results.md").read_text()
    assert "raftkv[batch] write-majority" in md and "p99.9 ms" in md


def test_raftkv_through_the_etcd_client_path(tmp_path: Path) -> None:
    """`--client etcd`: raftkv driven by the very driver etcd gets (etcd's v3 API, its preload Txns too),
    a session read level as metadata with the token from a Put's trailing metadata; every operation
    answered."""
    cmd = [sys.executable, "-m", "benchmarks", "run", "--systems", "raftkv", "--client", "etcd", "--modes",
           "read-session", "--concurrency", "2", "--duration", "1", "--keys", "50",
           "--procs", "1", "--unary-modes", "", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out,) = list(tmp_path.glob("bench-*"))
    doc = json.loads((out / "results.json").read_text())
    assert doc["preload"]["raftkv"]["keys_loaded"] == 50
    runs = doc["runs"]
    assert [r["spec"]["label"] for r in runs] == ["raftkv[etcd] read-session"]
    for r in runs:
        assert r["ops"] > 0 and r["errors"] == {}
