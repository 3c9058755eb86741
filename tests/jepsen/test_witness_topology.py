"""Witness topologies of the partition suite, built without namespaces: the flags every founder gets,
the nodes a `kill-data` fault may hit, and the run configuration `--topology` makes."""

from __future__ import annotations

from pathlib import Path

import pytest

from .__main__ import _subset
from .history import History
from .nemesis import NEMESES, WITNESS_NEMESES, Nemesis
from .nodes import Cluster
from .runner import RunConfig
from .topology import Topology
from .witness_topology import parse_topology


def test_topologies_name_their_witnesses_and_refuse_nonsense() -> None:
    t = parse_topology("2+1")
    assert (t.nodes, t.data_slots, sorted(t.witness_slots)) == (3, [1, 2], [3])
    assert t.flags(1) == ["--witnesses", "3"] and t.flags(3) == ["--witnesses", "3", "--witness"]
    assert sorted(parse_topology("4+1").witness_slots) == [5]
    for bad in ("2", "1+1", "0+1", "3+0", "a+b"):
        with pytest.raises(ValueError):
            parse_topology(bad)


def test_founders_get_the_witness_flags_and_a_rejoining_node_does_not(tmp_path: Path) -> None:
    cluster = Cluster(Topology("rkvjx", 3, 9), tmp_path, witnesses=parse_topology("2+1"))
    peers = cluster.founding_peers
    w = cluster.nodes[3]
    assert w.command(peers)[-3:] == ["--witnesses", "3", "--witness"]
    assert cluster.nodes[1].command(peers)[-2:] == ["--witnesses", "3"]
    assert "--witness" not in w.command(None) and "--witnesses" not in w.command(None)
    w.wipe(new_id=4)  # removed and added back under a new id: a data node
    assert "--witness" not in w.command(peers)
    assert cluster.data_slots == [1, 2]
    assert Cluster(Topology("rkvjx", 3, 9), tmp_path / "plain").data_slots == [1, 2, 3]


def test_kill_data_hits_data_nodes_only(tmp_path: Path) -> None:
    cluster = Cluster(Topology("rkvjx", 5, 9), tmp_path, witnesses=parse_topology("4+1"))
    nemesis = Nemesis(cluster, History(), "kill-data", seed=3)
    hit = {nemesis.inject("kill-data").detail["node"] for _ in range(60)}  # no process: kill is a no-op
    assert hit == {1, 2, 3, 4}
    nemesis.close()


def test_run_config_and_matrix_take_the_topology() -> None:
    cfg = RunConfig("register", "kill-data", seed=2, topology="4+1")
    assert cfg.nodes == 5 and cfg.witnesses is not None and cfg.name == "register--kill-data--s2--w4p1"
    assert RunConfig("register", "kill").witnesses is None
    # The default matrix is unchanged; kill-data runs only when named.
    assert _subset(None, NEMESES, "nemesis", NEMESES + WITNESS_NEMESES) == NEMESES
    assert _subset("kill-data,kill", NEMESES, "nemesis", NEMESES + WITNESS_NEMESES) == ["kill-data", "kill"]
