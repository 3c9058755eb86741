"""With JSON logs, gRPC core's own (non-JSON) lines are silenced unless the operator asked for them."""

from __future__ import annotations

from pathlib import Path

from raftkv.server.logging_setup import grpc_core_verbosity


def test_json_logs_silence_grpc_core_and_console_logs_keep_its_errors(tmp_path: Path) -> None:
    assert grpc_core_verbosity(["--log-format", "json"], {}, True) == "NONE"
    assert grpc_core_verbosity(["--log-format=json"], {}, True) == "NONE"
    assert grpc_core_verbosity([], {"RAFTKV_SERVE_LOG_FORMAT": "json"}, True) == "NONE"
    assert grpc_core_verbosity([], {}, False) == "NONE"  # auto, stderr not a terminal: JSON
    assert grpc_core_verbosity([], {}, True) == "ERROR"
    assert grpc_core_verbosity(["--log-format", "console"], {}, False) == "ERROR"
    # The flag wins over the environment, which wins over the file.
    toml = tmp_path / "node.toml"
    toml.write_text('log_format = "json"\n')
    assert grpc_core_verbosity(["--config", str(toml)], {}, True) == "NONE"
    assert grpc_core_verbosity(["--config", str(toml)], {"RAFTKV_SERVE_LOG_FORMAT": "console"}, False) == "ERROR"
    assert grpc_core_verbosity(["--config", str(toml), "--log-format", "console"], {}, False) == "ERROR"
    # An operator's own GRPC_VERBOSITY is left alone.
    assert grpc_core_verbosity(["--log-format", "json"], {"GRPC_VERBOSITY": "debug"}, False) is None
