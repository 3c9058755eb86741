"""Runs every scenario in scenarios/: each is a readable script of steps and expected state."""

from pathlib import Path

import pytest

from .harness import run_scenario

SCENARIOS = sorted((Path(__file__).parent / "scenarios").glob("*.txt"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(path: Path) -> None:
    run_scenario(path.read_text())
