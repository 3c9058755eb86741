"""The partition suite's clusters with TCP peer ports (`python -m tests.jepsen --peer-transport tcp`): the
command lines its nodes get, checked without namespaces (`raftkv serve` validates them as it would)."""

from __future__ import annotations

from pathlib import Path

from raftkv.cli.server_main import build_config

from .nodes import PEER_PORT, Cluster
from .topology import Topology


def _config(cmd: list[str]) -> dict[str, object]:
    """The flags of a `raftkv serve` command line, as click would hand them to build_config."""
    args = cmd[cmd.index("serve") + 1:]
    flags: dict[str, object] = {}
    i = 0
    while i < len(args):
        key = args[i].removeprefix("--").replace("-", "_")
        if key == "join":
            flags[key] = True
            i += 1
            continue
        flags["node_id" if key == "id" else key] = args[i + 1]
        i += 2
    for k in ("node_id", "tick_ms", "election_ticks", "heartbeat_ticks"):
        if k in flags:
            flags[k] = int(flags[k])  # type: ignore[arg-type]
    return flags


def test_tcp_peers_give_every_founder_the_same_peer_ports(tmp_path: Path) -> None:
    topo = Topology("rkvjx", 3, 9)
    cluster = Cluster(topo, tmp_path, peer_tcp=True)
    spec = ",".join(f"{i}={topo.ip(i)}:{PEER_PORT}" for i in (1, 2, 3))
    for slot, node in cluster.nodes.items():
        cmd = node.command(cluster.founding_peers)
        assert cmd[cmd.index("--peer-listen") + 1] == f"{topo.ip(slot)}:{PEER_PORT}"
        assert cmd[cmd.index("--initial-peer-addresses") + 1] == spec
        cfg = build_config(None, _config(cmd))
        assert cfg.initial_peer_addresses[slot] == node.peer_address
    # A node added back under a new id joins with its peer port and no founding description.
    node = cluster.nodes[2]
    node.wipe(4)
    cmd = node.command(None)
    assert "--initial-peer-addresses" not in cmd and "--join" in cmd
    assert build_config(None, _config(cmd)).peer_listen == node.peer_address


def test_grpc_peers_have_no_peer_port(tmp_path: Path) -> None:
    cluster = Cluster(Topology("rkvjx", 3, 9), tmp_path)
    cmd = cluster.nodes[1].command(cluster.founding_peers)
    assert "--peer-listen" not in cmd and "--initial-peer-addresses" not in cmd
    assert cluster.nodes[1].peer_address == ""
