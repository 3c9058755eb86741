"""Automatic log compaction: by entry count (see test_cluster's snapshot catch-up) and by log size, so big
values cannot fill a disk before the entry count is reached."""

from __future__ import annotations

from pathlib import Path

import pytest

from .local_cluster import LocalCluster

BIG = "x" * 8192


@pytest.mark.parametrize("log_bytes,expect_snapshot", [(128 * 1024, True), (1 << 30, False)])
def test_log_is_compacted_by_size(tmp_path: Path, log_bytes: int, expect_snapshot: bool) -> None:
    flags = ["--snapshot-entries", "1000000", "--snapshot-keep-entries", "5", "--snapshot-log-bytes", str(log_bytes)]
    c = LocalCluster(tmp_path, extra=flags).start_all()
    try:
        with c.client() as cl:
            for i in range(40):  # ~320 KiB of values, far below the entry threshold
                cl.put(f"big-{i}", BIG)
            commit = cl.put("last", "1").meta.index
        leader = c.wait_leader()
        c.wait_applied(leader, commit)
        st = c.status(leader)
        assert (st.snapshot_index > 0) is expect_snapshot, st
        with c.client() as cl:
            assert cl.range("big-", prefix=True, count_only=True).count == 40
    finally:
        c.stop_all()
