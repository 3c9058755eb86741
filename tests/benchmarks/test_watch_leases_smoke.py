"""`python -m benchmarks watch` and `leases` run end to end on tiny sizes (raftkv only, one node, so no etcd is needed)
and write the figures they promise. Speed is never asserted; correctness of what the watchers received is
(every acknowledged put delivered once, in order, to every watch), because the benchmark reports it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# End-to-end runs of two benchmark commands (~20 s together): in `make test-long`, beside the soaks.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, *args: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks", *args, "--systems", "raftkv", "--nodes", "1", "--procs", "1", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out,) = list(tmp_path.glob("bench-*"))
    assert (out / "results.md").exists()
    return json.loads((out / "results.json").read_text())


def test_watch_fan_out_writes_its_figures(tmp_path: Path) -> None:
    doc = _run(tmp_path, "watch", "--watchers", "3", "--duration", "0.5", "--rate", "20")
    rows = doc["watch"]
    assert [r["watchers"] for r in rows] == [3]
    for r in rows:
        assert r["watches_created"] == r["watchers"]
        assert r["puts_acked"] > 0
        assert r["events"] == r["expected_events"] == r["puts_acked"] * r["watchers"]
        assert r["exactly_once_in_order"] is True
        assert r["delay_p50_ms"] is not None and r["delay_p99_ms"] >= r["delay_p50_ms"]
        assert r["events_s"] > 0 and r["client_cpu_cores"] is not None
    assert "Watch fan-out" in doc["sections"]


def test_leases_writes_its_figures(tmp_path: Path) -> None:
    doc = _run(tmp_path, "leases", "--leases", "50", "--duration", "0.6", "--idle", "0.2", "--streams", "1")
    (r,) = doc["leases"]
    assert r["granted"] == 50 and r["grant_failed"] == 0
    assert r["keepalives_s"] > 0 and r["keepalive_lost"] == 0 and r["cadence_lost"] == 0
    assert r["rss_before_mb"] > 0 and r["rss_after_mb"] > 0
    assert r["keepalive_cpu_cores"] >= 0
    assert "Leases" in doc["sections"]
