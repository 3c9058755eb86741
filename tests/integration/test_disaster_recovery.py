"""Disaster recovery after a permanent loss of quorum (issue 17 item 4, docs/runbooks/quorum-lost.md):
two of three nodes are killed for good, the third is started with `--force-new-cluster`, two fresh nodes
are added (learner, catch up, promote), and every write acknowledged before the loss is there, on the
new members too, even once the survivor itself is gone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from raftkv import exit_codes
from raftkv.client import Client, RaftKVError

from .local_cluster import LocalCluster
from .observe import wait_for


def test_force_new_cluster_then_re_add_two_fresh_nodes(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path).start_all()
    try:
        leader = cluster.wait_leader()
        survivor = next(i for i in sorted(cluster.ports) if i != leader)
        acked: dict[bytes, bytes] = {}
        with cluster.client() as c:
            for i in range(40):
                r = c.put(b"acked%03d" % i, b"v%d" % i)
                acked[b"acked%03d" % i] = b"v%d" % i
        cluster.wait_applied(survivor, r.meta.index)
        for i in sorted(cluster.ports):
            if i != survivor:
                cluster.kill(i)  # gone for good: their data directories are never used again
        assert cluster.stop(survivor) == 0

        cmd = cluster.command(survivor) + ["--force-new-cluster"]
        with open(cluster.logs[survivor], "ab") as log:
            cluster.procs[survivor] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        assert cluster.wait_leader([survivor], timeout=30) == survivor
        with Client(cluster.address(survivor), timeout=10) as c:
            for key, value in acked.items():
                assert c.get(key).kv.value == value
            c.put(b"after-force", b"1")
            assert [m.id for m in c.members().members] == [survivor]
            for new in (4, 5):
                cluster.add_node(new)
                c.member_add(new, cluster.address(new), learner=True)
                cluster.start(new, join=True)

                def promoted(n: int = new) -> bool:
                    try:
                        c.member_promote(n)
                        return True
                    except RaftKVError:
                        return False

                wait_for(f"node {new} to catch up and be promoted", promoted, timeout=30, every=0.3)
            voters = sorted(m.id for m in c.members().members if not m.learner)
            assert voters == sorted([survivor, 4, 5])
            last = c.put(b"with-new-members", b"1", ack="sync").meta.index
        # The survivor goes too: the two fresh members hold everything and elect a leader between them.
        cluster.kill(survivor)
        assert cluster.wait_leader([4, 5], timeout=30) in (4, 5)
        with Client(f"{cluster.address(4)},{cluster.address(5)}", timeout=10) as c:
            for key, value in acked.items():
                assert c.get(key).kv.value == value
            assert c.get(b"after-force").found and c.get(b"with-new-members").found
            assert c.put(b"on-the-new-pair", b"1").meta.index > last
    finally:
        cluster.stop_all()


def test_force_new_cluster_on_an_empty_directory_is_refused(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "raftkv.cli.server_main", "serve", "--id", "1", "--data-dir",
                        str(tmp_path / "empty"), "--listen", "127.0.0.1:1", "--peers", "1=127.0.0.1:1",
                        "--force-new-cluster"], capture_output=True, text=True, timeout=60)
    assert r.returncode == exit_codes.USAGE and r.stderr.count("\n") == 1 and "holds no data" in r.stderr
    assert not (tmp_path / "empty" / "data.mdb").exists()
