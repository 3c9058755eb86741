"""The default `run` matrix (what `make bench` runs) keeps a low-concurrency row of every ack and read
level and the unary path at every concurrency, so a regression at c=1 or c=16 cannot hide behind c=64."""

from __future__ import annotations

from benchmarks.cli import DEFAULT_MODES, DEFAULT_SWEEP
from benchmarks.runner import plan_matrix


def test_the_default_matrix_has_c1_and_c16_rows_of_every_level_and_unary_at_every_concurrency() -> None:
    plan = plan_matrix(DEFAULT_MODES, DEFAULT_SWEEP, [1, 16, 64, 256], [1, 16, 64], DEFAULT_SWEEP, "batch")
    batch = {(m, c) for m, c, client in plan if client == "batch"}
    unary = {(m, c) for m, c, client in plan if client == "unary"}
    for mode in DEFAULT_MODES:
        assert {(mode, 1), (mode, 16), (mode, 64)} <= batch, mode
    sweep = {(mode, c) for mode in DEFAULT_SWEEP for c in (1, 16, 64, 256)}
    assert sweep <= batch
    assert unary == sweep
    assert len(plan) == len(set(plan))


def test_a_concurrency_list_without_the_all_modes_levels_still_runs_every_mode_once() -> None:
    plan = plan_matrix(["write-leader", "write-majority"], ["write-majority"], [128], [1, 16, 64], [], "batch")
    assert plan == [("write-leader", 128, "batch"), ("write-majority", 128, "batch")]
