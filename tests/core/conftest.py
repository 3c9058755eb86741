"""`--rewrite`: write the actual output of each datadriven scenario back into its file (scenarios/)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--rewrite", action="store_true", default=False,
                     help="rewrite the expected output of tests/core/scenarios/*.txt with what the core did")
