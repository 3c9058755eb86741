from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .local_cluster import LocalCluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path).start_all()
    try:
        yield c
    finally:
        c.stop_all()
