"""Runs every datadriven scenario in scenarios/ (see datadriven.py and scenarios/README.md): each
command's printed Readys and messages must match the file, and every `expect` must hold.

`pytest tests/core/test_scenarios.py --rewrite` (or RAFTKV_REWRITE=1) writes the actual output back."""

import os
from pathlib import Path

import pytest

from .datadriven import run_file

SCENARIOS = sorted((Path(__file__).parent / "scenarios").glob("*.txt"))


def _rewrite(config: pytest.Config) -> bool:
    return bool(config.getoption("rewrite", default=False)) or os.environ.get("RAFTKV_REWRITE") == "1"


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(path: Path, request: pytest.FixtureRequest) -> None:
    run_file(path, rewrite=_rewrite(request.config))
