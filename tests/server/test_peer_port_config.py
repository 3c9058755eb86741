"""The TCP peer port's settings (`--peer-listen`, `--initial-peer-addresses`) and the member record that
carries a peer port (MemberInfo.peer_address): one-line refusals, and old records still decoding."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from raftkv import exit_codes
from raftkv.cli.server_main import build_config
from raftkv.core import ConfChange, ConfChangeType, ConfState
from raftkv.server.config import ConfigError
from raftkv.server.members import MemberInfo, MemberRegistry

PEERS = "1=127.0.0.1:7001,2=127.0.0.1:7002"
BASE = {"node_id": 1, "data_dir": "/tmp/unused-raftkv-config-test", "listen": "127.0.0.1:7001", "peers": PEERS}


@pytest.mark.parametrize(("flags", "message"), [
    ({"peer_listen": "127.0.0.1:99999"}, "--peer-listen: .*out of range"),
    ({"peer_listen": "127.0.0.1:7001"}, "--peer-listen 127.0.0.1:7001 is also the gRPC or metrics address"),
    ({"initial_peer_addresses": "3=127.0.0.1:7103"}, "names node 3, which --peers does not list"),
    ({"initial_peer_addresses": "2=nohost"}, "ID=HOST:PORT|HOST:PORT"),
    ({"initial_peer_addresses": "2=127.0.0.1:0"}, r"--initial-peer-addresses \(node 2\)"),
    ({"peer_listen": "127.0.0.1:7101", "initial_peer_addresses": "1=127.0.0.1:7109"},
     "gives node 1 the peer port 127.0.0.1:7109, but --peer-listen is 127.0.0.1:7101"),
    ({"initial_peer_addresses": "1=127.0.0.1:7101"}, "--peer-listen is not set"),
])
def test_bad_peer_port_settings_are_refused(flags: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(None, {**BASE, **flags})


def test_a_joining_node_gets_its_peer_port_from_members_add() -> None:
    with pytest.raises(ConfigError, match="kv members add --peer-addr"):
        build_config(None, {"node_id": 3, "data_dir": "/tmp/x", "join": True,
                            "initial_peer_addresses": "1=127.0.0.1:7101"})
    cfg = build_config(None, {"node_id": 3, "data_dir": "/tmp/x", "join": True, "peer_listen": "127.0.0.1:7103"})
    assert cfg.initial_peer_addresses == {}


def test_own_peer_port_defaults_to_peer_listen() -> None:
    cfg = build_config(None, {**BASE, "peer_listen": "127.0.0.1:7101", "initial_peer_addresses": "2=127.0.0.1:7102"})
    assert cfg.initial_peer_addresses == {1: "127.0.0.1:7101", 2: "127.0.0.1:7102"}
    assert build_config(None, dict(BASE)).initial_peer_addresses == {}


def test_serve_refuses_a_bad_peer_port_in_one_line(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "raftkv.cli.server_main", "serve", "--id", "1", "--data-dir",
                        str(tmp_path / "d"), "--listen", "127.0.0.1:7001", "--peer-listen", "127.0.0.1:7001"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == exit_codes.USAGE, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "--peer-listen" in lines[0], lines


def test_member_records_without_a_peer_port_still_decode() -> None:
    old = msgpack.packb({"address": "h:1", "sync": False, "semi_sync": False, "name": ""}, use_bin_type=True)
    assert MemberInfo.decode(old) == MemberInfo("h:1")
    info = MemberInfo("h:1", peer_address="h:2")
    assert MemberInfo.decode(info.encode()) == info
    assert b"peer_address" not in MemberInfo("h:1").encode()  # what older nodes wrote, unchanged


class _Store:
    def __init__(self, saved: dict[int, bytes]) -> None:
        self.saved = saved

    def load_members(self) -> dict[int, bytes]:
        return self.saved


def test_a_marks_update_keeps_the_peer_port_and_configured_ports_fill_gaps() -> None:
    r = MemberRegistry(_Store({1: MemberInfo("h:1").encode(), 2: MemberInfo("h:2", peer_address="h:12").encode()}))
    r.load({1: "h:1", 2: "h:2"}, {1: "h:11", 2: "h:99"})
    assert r.get(1).peer_address == "h:11"  # not recorded: the configured port fills the gap
    assert r.get(2).peer_address == "h:12"  # recorded: the log wins
    update = MemberInfo("h:2", sync=True, peer_address=r.get(2).peer_address)
    r.apply([ConfChange(ConfChangeType.UPDATE_NODE, 2, update.encode())], ConfState(frozenset({1, 2}), frozenset()))
    assert r.get(2).peer_address == "h:12" and r.get(2).sync
