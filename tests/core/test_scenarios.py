"""Runs every datadriven scenario in scenarios/ (see datadriven.py and scenarios/README.md): each
command's printed Readys and messages must match the file, and every `expect` must hold.

`pytest tests/core/test_scenarios.py --rewrite` (or RAFTKV_REWRITE=1) writes the actual output back."""

import os
from pathlib import Path

import pytest

from ..planted_bugs import CountingCommitRaft
from .datadriven import ScenarioError, run_file

SCENARIOS = sorted((Path(__file__).parent / "scenarios").glob("*.txt"))


def _rewrite(config: pytest.Config) -> bool:
    return bool(config.getoption("rewrite", default=False)) or os.environ.get("RAFTKV_REWRITE") == "1"


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(path: Path, request: pytest.FixtureRequest) -> None:
    run_file(path, rewrite=_rewrite(request.config))


def test_figure8_scenario_catches_a_commit_by_counting(tmp_path: Path) -> None:
    """Run with the commit rule broken (commit whatever a majority holds), figure8.txt fails at the line
    that says the term-2 entry is not committed: the scenario tests the rule, not its own transcript."""
    copy = tmp_path / "figure8.txt"
    copy.write_text((Path(__file__).parent / "scenarios" / "figure8.txt").read_text())
    with pytest.raises(ScenarioError, match=r"expect commit 1 6: node 1 commit is 7, expected 6"):
        run_file(copy, rewrite=True, raft_class=CountingCommitRaft)


def test_output_that_differs_fails_and_rewrite_accepts_it(tmp_path: Path) -> None:
    path = tmp_path / "s.txt"
    path.write_text("# a comment\ncluster 1\n----\nok\n\ncampaign 1\n----\n> 1 handling Ready\n  wrong\n")
    with pytest.raises(ScenarioError, match=r"s.txt:6: campaign 1: output differs"):
        run_file(path)
    run_file(path, rewrite=True)
    text = path.read_text()
    assert text.startswith("# a comment\ncluster 1\n----\nok\n\ncampaign 1\n----\n> 1 handling Ready\n")
    assert "wrong" not in text and "State: leader, leader 1" in text
    run_file(path)  # now it matches
    path.write_text(text + "\nexpect role 1 follower\n")
    with pytest.raises(ScenarioError, match="role is leader, expected follower"):
        run_file(path, rewrite=True)  # an expectation fails even when rewriting
    path.write_text("cluster 1\n----\nok\n\nfrobnicate 1\n")
    with pytest.raises(ScenarioError, match="unknown command 'frobnicate'"):
        run_file(path, rewrite=True)
