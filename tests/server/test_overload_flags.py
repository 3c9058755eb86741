"""Admission-control settings (`--overload-*`) that make no sense are refused with one line naming the
flag; `raftkv serve` exits with USAGE."""

from __future__ import annotations

import subprocess
import sys

import pytest

from raftkv import exit_codes
from raftkv.cli.server_main import build_config
from raftkv.server.config import ConfigError

BASE = {"node_id": 1, "data_dir": "/tmp/unused-raftkv-config-test"}


@pytest.mark.parametrize(("flag", "value"), [
    ("overload_max_proposals", 0), ("overload_max_proposal_bytes", -1), ("overload_max_unapplied", 0),
    ("overload_max_follower_queue_bytes", 0), ("overload_max_ack_waiters", 0), ("overload_max_read_waiters", 0),
    ("overload_pushback_ms", 0), ("overload_low_ratio", 1.0), ("overload_low_ratio", 0.0),
    ("overload_max_queue_delay_ms", -1),
])
def test_nonsense_watermarks_are_refused(flag: str, value: float) -> None:
    with pytest.raises(ConfigError, match="--" + flag.replace("_", "-")):
        build_config(None, {**BASE, flag: value})


def test_defaults_and_a_flag_reach_the_node(tmp_path: object) -> None:
    cfg = build_config(None, {**BASE, "overload_max_proposals": 10})
    assert cfg.overload_max_proposals == 10 and cfg.overload_max_unapplied == 5000
    assert cfg.overload_max_queue_delay_ms == 250
    assert build_config(None, {**BASE, "overload_max_queue_delay_ms": 0}).overload_max_queue_delay_ms == 0  # off
    r = subprocess.run([sys.executable, "-m", "raftkv.cli.server_main", "serve", "--id", "1", "--data-dir",
                        str(tmp_path), "--overload-low-ratio", "2"], capture_output=True, text=True, timeout=60)
    assert r.returncode == exit_codes.USAGE
    assert r.stderr.strip().splitlines() == ["Error: --overload-low-ratio must be between 0 and 1 (exclusive), not 2.0"]
