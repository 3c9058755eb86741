"""A short slice of the partition matrix (the full one is `make jepsen`): real nodes, real faults, every
checker must pass, and each run must leave its history, summary and plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import NET, PREFIX
from .runner import RunConfig, run_one

SMOKE = [("register", "mixed", 11), ("bank", "partition-leader-minority", 12), ("set", "kill-leader", 13),
         ("session", "pause-leader", 14), ("staleness", "isolate-leader", 15)]


@pytest.mark.parametrize(("workload", "nemesis", "seed"), SMOKE, ids=[f"{w}-{n}" for w, n, _ in SMOKE])
def test_smoke(namespaces: None, tmp_path: Path, workload: str, nemesis: str, seed: int) -> None:
    cfg = RunConfig(workload, nemesis, seed, time_limit=10.0, prefix=PREFIX, net=NET)
    res = run_one(cfg, tmp_path)
    summary = (res.out / "summary.txt").read_text()
    assert res.error == "", summary
    assert res.valid is True, summary
    assert res.operations > 100, summary
    assert res.faults >= 1, summary
    for name in ("history.jsonl", "summary.json", "latency.png", "throughput.png"):
        assert (res.out / name).stat().st_size > 0, name
    data = json.loads((res.out / "summary.json").read_text())
    assert data["valid"] is True and data["checkers"] and all(c["valid"] for c in data["checkers"])
    events = [json.loads(line) for line in (res.out / "history.jsonl").read_text().splitlines()]
    assert {"invoke", "ok"} <= {e["type"] for e in events}
    assert any(e.get("process") == "nemesis" and e["f"] == "healed" for e in events)
