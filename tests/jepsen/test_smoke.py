"""A short slice of the partition matrix (the full one is `make jepsen`): real nodes, real faults, every
checker must pass, and each run must leave its history, summary and plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import NET, PREFIX
from .runner import RunConfig, run_one

SMOKE = [("register", "mixed", 11), ("bank", "partition-leader-minority", 12)]
# A paused leader must not answer from a lease or claim a staleness bound it measured in ticks.
SMOKE += [("staleness", "pause-leader", 16), ("lease-read", "pause-leader", 18)]
# These run in `make test-long` (and every pair in `make jepsen`): the namespace runs are serialized, so
# each one here is ~40 s on `make test`'s critical path.
SLOW = [("set", "kill-leader", 13), ("session", "pause-leader", 14), ("staleness", "isolate-leader", 15)]
CASES = [pytest.param(*c, id=f"{c[0]}-{c[1]}") for c in SMOKE] + [
    pytest.param(*c, id=f"{c[0]}-{c[1]}", marks=pytest.mark.slow) for c in SLOW]


@pytest.mark.parametrize(("workload", "nemesis", "seed"), CASES)
def test_smoke(namespaces: None, tmp_path: Path, workload: str, nemesis: str, seed: int) -> None:
    cfg = RunConfig(workload, nemesis, seed, time_limit=10.0, prefix=PREFIX, net=NET)
    res = run_one(cfg, tmp_path)
    summary = (res.out / "summary.txt").read_text()
    assert res.error == "", summary
    assert res.valid is True, summary
    # Something was checked: reads that succeeded, served by more than one member (the checkers see every
    # node's answers, not one node's), and faults that really happened: injected and healed, none raising.
    assert res.reads_ok >= 50, summary
    assert len(res.read_nodes) >= 2, summary
    assert res.faults_injected >= 1, summary
    assert res.injection_errors == 0, (out := res.out / "nemesis-errors.txt").exists() and out.read_text()
    for name in ("history.jsonl", "summary.json", "latency.png", "throughput.png"):
        assert (res.out / name).stat().st_size > 0, name
    data = json.loads((res.out / "summary.json").read_text())
    assert data["valid"] is True and data["checkers"] and all(c["valid"] for c in data["checkers"])
    assert "members-agree" in {c["checker"] for c in data["checkers"]}
    events = [json.loads(line) for line in (res.out / "history.jsonl").read_text().splitlines()]
    assert {"invoke", "ok"} <= {e["type"] for e in events}
    assert any(e.get("process") == "nemesis" and e["f"] == "healed" for e in events)
    starts = [e["value"] for e in events if e.get("process") == "nemesis" and e["f"] == "start"]
    assert any(s["ok"] for s in starts), starts
