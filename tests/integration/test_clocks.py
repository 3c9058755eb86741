"""Clocks on real processes: a paused leader's lease and staleness proof, and a leadership transfer to a
paused node.

A SIGSTOPped process counts no ticks, and when it resumes its tick timer fires once, not once per tick it
missed. So a leader that measured its lease in ticks would resume believing it still held a lease that
ran out long ago in real time, and answer `lease` and `bounded_staleness` reads from a state that another
leader has since overtaken. The lease and the leader's own staleness bound are measured on its monotonic
clock from when it sent the round of heartbeats a quorum confirmed; these tests pause real processes and
look at what clients get back.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from raftkv.client import AsyncClient, Client, RaftKVError
from raftkv.proto.stubs import kv_pb2 as pb

from .local_cluster import LocalCluster
from .observe import wait_for

PAUSE_S = 2.5


def _others(cluster: LocalCluster, node: int) -> list[int]:
    return [i for i in sorted(cluster.procs) if i != node]


def test_a_resumed_leader_answers_no_lease_or_bounded_read_with_data_overtaken_while_it_was_paused(
        tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, extra=["--lease-reads"]).start_all()
    try:
        leader = cluster.wait_leader()
        addr = cluster.address(leader)
        with Client(addr, timeout=10) as c:
            c.put("k", "old")

        async def scenario() -> tuple[list[object], int]:
            async with AsyncClient(addr, timeout=20) as ac:
                async def lease_read() -> pb.GetResponse | None:
                    r = await ac.get("k", consistency="lease", endpoint=addr)
                    return r if r.meta.consistency_achieved == pb.LEASE else None

                # Not vacuous: before the pause the leader serves lease reads as LEASE, and bounded reads
                # itself with a tight bound.
                for _ in range(200):
                    if await lease_read() is not None:
                        break
                    await asyncio.sleep(0.01)
                else:
                    raise AssertionError("the leader never served a read as LEASE")
                r = await ac.get("k", consistency="bounded_staleness", max_staleness_ms=300, endpoint=addr)
                assert r.meta.served_by == leader and r.meta.staleness_bound_ms <= 300

                cluster.signal(leader, signal.SIGSTOP)
                paused = time.monotonic()
                pending = [asyncio.ensure_future(ac.get("k", consistency="lease", endpoint=addr))
                           for _ in range(10)]
                pending += [asyncio.ensure_future(ac.get("k", consistency="bounded_staleness",
                                                         max_staleness_ms=300, endpoint=addr))
                            for _ in range(10)]
                await asyncio.sleep(0.2)  # the requests are on the wire, waiting in the paused node's socket

                def overtake() -> int:
                    new = cluster.wait_leader(among=_others(cluster, leader))
                    with Client(cluster.address(new), timeout=10) as w:
                        return w.put("k", "new").meta.index

                new_index = await asyncio.get_running_loop().run_in_executor(None, overtake)
                await asyncio.sleep(max(0.0, PAUSE_S - (time.monotonic() - paused)))
                cluster.signal(leader, signal.SIGCONT)
                return list(await asyncio.gather(*pending, return_exceptions=True)), new_index

        results, new_index = asyncio.run(scenario())
    finally:
        cluster.stop_all()
    answered = [r for r in results if isinstance(r, pb.GetResponse)]
    stale = [(f"node {r.meta.served_by}", pb.Consistency.Name(r.meta.consistency_achieved),
              f"claimed {r.meta.staleness_bound_ms} ms") for r in answered if r.kv.value != b"new"]
    errors = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(e, RaftKVError) for e in errors), errors
    print(f"\nafter the pause: {len(answered)} answered, {len(errors)} refused "
          f"{sorted({type(e).__name__ for e in errors})}")
    assert stale == [], f"the resumed leader answered with data overtaken at index {new_index}: {stale}"


def _terms(cluster: LocalCluster) -> dict[int, int]:
    return {i: cluster.status(i).term for i in sorted(cluster.procs)}


def test_a_transfer_to_a_paused_node_that_timed_out_causes_no_election_when_it_resumes(tmp_path: Path) -> None:
    """The leader sends TimeoutNow to the target of a transfer; if the target is paused, the message waits
    in its socket while the leader gives up on the transfer (after an election timeout). When the target
    resumes, that old TimeoutNow must not make it campaign: the cluster keeps its leader and its term."""
    cluster = LocalCluster(tmp_path).start_all()
    try:
        leader = cluster.wait_leader()
        target = _others(cluster, leader)[0]
        with Client(cluster.address(leader), timeout=10) as c:
            index = c.put("k", "v").meta.index
        cluster.wait_applied(target, index)
        time.sleep(0.3)  # the target has acknowledged everything: the leader's view of it is current
        before = _terms(cluster)
        assert len(set(before.values())) == 1
        cluster.signal(target, signal.SIGSTOP)
        try:
            with Client(cluster.address(leader), timeout=1.5) as c:
                with pytest.raises(RaftKVError):
                    c.transfer_leader(target)  # the target cannot campaign while paused
            time.sleep(1.0)  # many election timeouts: the leader has long given up on the transfer
            assert cluster.status(leader).leader_id == leader
        finally:
            cluster.signal(target, signal.SIGCONT)
        time.sleep(2.0)  # time for a campaign, had the target started one
        assert cluster.wait_leader() == leader
        after = _terms(cluster)
        assert after == before, f"terms moved after the paused target resumed: {before} -> {after}"
        with Client(cluster.endpoints, timeout=10) as c:  # and the cluster works as before
            assert c.put("k", "w").meta.term == before[leader]
        # The target dropped the stale TimeoutNow, and said so.
        assert wait_for("the target's log line", lambda: "stale leader-transfer request" in cluster.log_text(target),
                        timeout=5)
    finally:
        cluster.stop_all()
