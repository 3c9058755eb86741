"""The namespaces themselves: set-up is idempotent and a fresh run clears what a crashed one left."""

from __future__ import annotations

import socket
import subprocess
import sys

from .conftest import NET, PREFIX
from .topology import Topology, run


def _ours() -> tuple[list[str], str]:
    ns = [line.split()[0] for line in run("ip", "netns", "list").stdout.splitlines() if line.startswith(PREFIX)]
    return ns, run("ip", "-o", "link", "show").stdout


def test_setup_twice_then_leftovers_are_removed(namespaces: None) -> None:
    topo = Topology(PREFIX, 3, NET)
    topo.setup()
    topo.setup()  # idempotent: the second set-up first removes the first
    assert sorted(_ours()[0]) == [f"{PREFIX}1", f"{PREFIX}2", f"{PREFIX}3"]
    # a server in node 2's namespace, reachable from the root namespace through the bridge
    server = subprocess.Popen([*topo.exec_prefix(2), sys.executable, "-c",
                               f"import socket,time;s=socket.socket();s.bind(('{topo.ip(2)}',7999));s.listen();"
                               "time.sleep(60)"])
    try:
        for _ in range(50):
            try:
                socket.create_connection((topo.ip(2), 7999), timeout=1).close()
                break
            except OSError:
                subprocess.run(["sleep", "0.1"])
        else:
            raise AssertionError("node namespace not reachable through the bridge")
        # a cut: node 2 drops what the bridge address sends it
        topo.iptables_in(2, "-A", "INPUT", "-s", topo.bridge_ip, "-j", "DROP")
        try:
            socket.create_connection((topo.ip(2), 7999), timeout=0.5).close()
            raise AssertionError("connection went through a DROP rule")
        except OSError:
            pass
        topo.flush_rules(2)
        socket.create_connection((topo.ip(2), 7999), timeout=2).close()
        # "crash": nothing torn down; a fresh topology with the same prefix clears it all, process included
        Topology(PREFIX, 3, NET).teardown()
        assert server.wait(10) == -9
        ns, links = _ours()
        assert ns == [] and f"{PREFIX}br" not in links and f"{PREFIX}v1" not in links
    finally:
        if server.poll() is None:
            server.kill()
        topo.teardown()
