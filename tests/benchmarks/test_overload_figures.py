"""The overload benchmark's derived figures (no cluster): the leader's handler-time p99 from two scrapes
of a cumulative histogram, and the peak's knee."""

from __future__ import annotations

import pytest

from benchmarks import overload


def test_server_p99_is_the_bucket_bound_holding_99_percent_of_the_calls_between_scrapes() -> None:
    before = {0.1: 100.0, 0.25: 100.0, 0.5: 100.0, float("inf"): 100.0}
    after = {0.1: 1090.0, 0.25: 1095.0, 0.5: 1100.0, float("inf"): 1100.0}  # 1000 new: 990 <= 0.1 s
    assert overload._server_p99_ms(before, after) == 100.0
    after[0.1] = 1089.0
    assert overload._server_p99_ms(before, after) == 250.0
    assert overload._server_p99_ms(after, after) is None


def test_the_p99_at_peak_is_the_knees(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = {16: {"concurrency": 16, "ops_s": 800, "p99_ms": 50.0},
            64: {"concurrency": 64, "ops_s": 1250, "p99_ms": 120.0},
            256: {"concurrency": 256, "ops_s": 1300, "p99_ms": 400.0}}

    async def closed_loop(target: object, address: str, n: int, seconds: float) -> dict:
        return runs[n]

    monkeypatch.setattr(overload, "closed_loop", closed_loop)
    peak = overload._peak(None, "", [16, 64, 256], 1.0)  # type: ignore[arg-type]
    assert (peak["peak_ops_s"], peak["peak_p99_ms"], peak["knee_concurrency"]) == (1300, 120.0, 64)
