"""Numeric serve settings that make no sense are refused with one line naming the flag."""

from __future__ import annotations

import subprocess
import sys

import pytest

from raftkv.cli.server_main import build_config
from raftkv.server.config import ConfigError

BASE = {"node_id": 1, "data_dir": "/tmp/unused-raftkv-config-test"}


@pytest.mark.parametrize(("flag", "value"), [
    ("snapshot_keep_entries", -1), ("snapshot_entries", 0), ("snapshot_entries", -5), ("snapshot_log_bytes", 0),
    ("heartbeat_ticks", 0), ("max_txn_ops", 0), ("max_range_bytes", 0), ("max_range_keys", -1),
    ("max_request_bytes", 0), ("max_request_bytes", 2 << 30),
    ("history_revisions", 0), ("history_bytes", 0), ("history_seconds", 0.0), ("watch_buffer_events", 0),
    ("watch_progress_ms", 0), ("max_watches_per_stream", 0), ("max_lease_ttl", 0),
])
def test_nonsense_numbers_are_refused(flag: str, value: int) -> None:
    with pytest.raises(ConfigError, match="--" + flag.replace("_", "-")):
        build_config(None, {**BASE, flag: value})


def test_request_limit_must_hold_the_largest_key_and_value() -> None:
    with pytest.raises(ConfigError, match="--max-request-bytes"):
        build_config(None, {**BASE, "max_value_bytes": 4 << 20})
    cfg = build_config(None, {**BASE, "max_value_bytes": 4 << 20, "max_request_bytes": 5 << 20})
    assert cfg.grpc_receive_limit > cfg.max_request_bytes
    assert cfg.peer_batch_bytes < cfg.grpc_receive_limit


def test_defaults_are_valid_and_zero_keep_entries_is_allowed() -> None:
    cfg = build_config(None, {**BASE, "snapshot_keep_entries": 0})
    assert cfg.max_request_bytes == 3 << 19
    assert cfg.max_range_bytes < 4 << 20


def test_serve_refuses_a_negative_keep_entries_with_one_line(tmp_path) -> None:  # noqa: ANN001
    p = subprocess.run([sys.executable, "-m", "raftkv.cli.server_main", "serve", "--id", "1", "--data-dir",
                        str(tmp_path / "d"), "--snapshot-keep-entries", "-1"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --snapshot-keep-entries"), p.stderr
    assert not (tmp_path / "d").exists()
