"""Session-wide settings for running the suite over several worker processes (`make test` uses
pytest-xdist; a plain `pytest` run is one process and none of this changes anything).

- Each worker draws loopback ports from its own slice of the range (benchmarks/ports.py), so two workers
  never start servers on the same port, and none takes the port of another's node while it is down
  for a restart. The slice goes through the environment, so the processes a test starts (`python -m
  benchmarks`, `raftkv dev`) stay inside it too.
- The tests that build network namespaces share one set of names and addresses (tests/jepsen/conftest.py):
  they form one xdist group and so run one after another on a single worker.
- That group (minutes of work on one worker), the simulator's many-seed tests and the `slow` tests are
  collected first: workers take
  tests in collection order, and the longest ones started last would leave the others idle at the end.
  Only the order changes; every test runs as before.
"""

from __future__ import annotations

import os

import pytest

from benchmarks.ports import SLICE_ENV

NAMESPACE_GROUP = "network-namespaces"


def pytest_configure(config: pytest.Config) -> None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        index = int(str(workerinput["workerid"]).removeprefix("gw"))
        os.environ[SLICE_ENV] = f"{index}/{workerinput['workercount']}"


def _needs_namespaces(item: pytest.Item) -> bool:
    return "namespaces" in getattr(item, "fixturenames", ())


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _needs_namespaces(item):
            item.add_marker(pytest.mark.xdist_group(NAMESPACE_GROUP))
    # Stable: within each class the collection order stays.
    items.sort(key=_start_order)


def _start_order(item: pytest.Item) -> int:
    if _needs_namespaces(item):
        return 0
    if item.get_closest_marker("slow") or item.path.parent.name == "sim":  # the simulator: minutes of CPU
        return 1
    return 2
