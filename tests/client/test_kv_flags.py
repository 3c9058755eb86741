"""Global flags of `kv` are accepted before or after the command, as etcdctl accepts them."""

from __future__ import annotations

from raftkv.cli.kv import hoist_global_flags


def test_flags_after_the_command_move_to_the_front() -> None:
    assert hoist_global_flags(["status", "-w", "table"]) == ["-w", "table", "status"]
    assert hoist_global_flags(["get", "k", "--endpoints=a:1", "--consistency", "serializable"]) == [
        "--endpoints=a:1", "get", "k", "--consistency", "serializable"]


def test_nothing_after_double_dash_is_touched() -> None:
    assert hoist_global_flags(["put", "--", "k", "-w"]) == ["put", "--", "k", "-w"]
    assert hoist_global_flags(["-w", "json", "members", "list"]) == ["-w", "json", "members", "list"]
