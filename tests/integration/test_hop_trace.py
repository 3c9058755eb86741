"""The opt-in hop trace (raftkv/hop_trace.py) on real nodes: with RAFTKV_TRACE_HOPS=1 each node serves the
hops it passed at /debug/hops, and `benchmarks hops` finds a lone write's and read's whole critical path
in them; without it the endpoint does not exist. No timing is asserted: only which hops are recorded."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from benchmarks.hops import CHAINS, _run_client, breakdown
from benchmarks.spec import RunSpec

from .local_cluster import LocalCluster


def _hops(c: LocalCluster, i: int) -> list[tuple[int, str]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{c.metrics_ports[i]}/debug/hops", timeout=5) as r:
        return [(t, name) for t, name in json.loads(r.read())]


def test_a_traced_cluster_records_every_hop_of_a_lone_write_and_read(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAFTKV_TRACE_HOPS", "1")
    c = LocalCluster(tmp_path).start_all()
    try:
        leader = c.wait_leader()
        follower = next(i for i in c.ports if i != leader)
        for i in c.ports:
            _hops(c, i)  # empties the rings: election and start-up hops are not wanted
        for case, target in (("write", leader), ("read-leader", leader), ("read-follower", follower)):
            mode = "write-majority" if case == "write" else "read-linearizable"
            spec = RunSpec(system="raftkv", mode=mode, concurrency=1, procs=1, keys=10, read_target="leader",
                           leader=c.address(target), endpoints=c.endpoints.split(","))
            spans = _run_client(spec, "write" if case == "write" else "read", 20, 5)
            events = {i: _hops(c, i) for i in c.ports}
            names = {name for evs in events.values() for _, name in evs}
            assert {"rpc.in", "rpc.out", "loop.wake", "ready"} <= names
            if case == "write":
                assert {"sync.start", "sync.end", "applied", "send.app", "send.app_resp",
                        f"peer.write.{follower}", f"peer.recv.{leader}"} <= names
            else:
                assert {"send.heartbeat", "send.heartbeat_resp", "read.state"} <= names
            b = breakdown(case, events, spans, leader, target)
            # A path is missed only when something else (a tick's heartbeat, an election) got in between.
            assert b["matched"] >= len(spans) // 2, b
            assert [h["hop"] for h in b["hops"] if "loop.wake" not in h["hop"] and "api.resumed" not in h["hop"]
                    ] == [f"{r} {h}" for r, h, opt in CHAINS[case] if not opt] + ["C answer"]
    finally:
        c.stop_all()


def test_without_the_variable_nothing_is_recorded_or_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAFTKV_TRACE_HOPS", raising=False)
    c = LocalCluster(tmp_path, n=1).start_all()
    try:
        with c.client() as cl:
            cl.put(b"k", b"v")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{c.metrics_ports[1]}/debug/hops", timeout=5)
        assert e.value.code == 404
    finally:
        c.stop_all()
