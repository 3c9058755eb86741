"""Session-wide settings for running the suite over several worker processes (`make test` uses
pytest-xdist; a plain `pytest` run is one process and none of this changes anything).

- Each worker draws loopback ports from its own slice of the range (benchmarks/ports.py), so two workers
  never start servers on the same port, and none takes the port of another's node while it is down
  for a restart. The slice goes through the environment, so the processes a test starts (`python -m
  benchmarks`, `raftkv dev`) stay inside it too.
- The tests that build network namespaces share one set of names and addresses: they take a lock for
  their whole run (tests/jepsen/conftest.py), so two never overlap whichever workers run them.
- The simulator's many-seed tests and the `slow` tests are collected first: workers take tests in
  collection order, and the longest ones started last would leave the others idle at the end. Only the
  order changes; every test runs as before.
"""

from __future__ import annotations

import os

import pytest

from benchmarks.ports import SLICE_ENV


def pytest_configure(config: pytest.Config) -> None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        index = int(str(workerinput["workerid"]).removeprefix("gw"))
        os.environ[SLICE_ENV] = f"{index}/{workerinput['workercount']}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_start_order)  # stable: within each class the collection order stays


def _start_order(item: pytest.Item) -> int:
    if item.get_closest_marker("slow") or item.path.parent.name == "sim":  # the simulator: minutes of CPU
        return 0
    return 1
