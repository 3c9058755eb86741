"""Read consistency levels on real processes. A follower is "cut off" by SIGSTOPping the leader and the other
follower (a real network partition is the partition suite's business): `serializable` still answers there,
`linearizable` never answers stale data, `bounded_staleness` answers while it can prove the bound and then
fails (strict) or tries the leader. Sessions read their own writes and never go backwards across nodes, and
concurrent linearizable reads share quorum rounds (counted on /metrics)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from raftkv.client import AsyncClient, Client, FailedPreconditionError, RaftKVError
from raftkv.layers.session import SessionToken
from raftkv.proto.stubs import kv_pb2 as pb

from .local_cluster import LocalCluster
from .observe import sample, scrape, wait_for


def _roles(cluster: LocalCluster) -> tuple[int, int, int]:
    leader = cluster.wait_leader()
    cut, other = (i for i in sorted(cluster.procs) if i != leader)
    return leader, cut, other


def test_cut_off_follower_serves_serializable_but_never_stale_linearizable(cluster: LocalCluster) -> None:
    leader, cut, other = _roles(cluster)
    with Client(cluster.address(leader), timeout=10) as c:
        v1 = c.put("k", "v1").meta.index
        cluster.wait_applied(cut, v1)
        cluster.signal(cut, signal.SIGSTOP)
        v2 = c.put("k", "v2").meta.index  # committed by the leader and the other follower only
    cluster.signal(leader, signal.SIGSTOP)
    cluster.signal(other, signal.SIGSTOP)
    cluster.signal(cut, signal.SIGCONT)
    try:
        with Client(cluster.address(cut), timeout=3) as c:
            r = c.get("k", consistency="serializable", endpoint=cluster.address(cut))
            # It answers from its own state: v1 (stale), or v2 if the write reached it before the cut.
            assert r.found and r.meta.served_by == cut
            assert r.meta.consistency_achieved == pb.SERIALIZABLE
            assert (r.kv.value, r.kv.mod_revision) in ((b"v1", v1), (b"v2", v2))
            assert r.meta.applied_index >= r.kv.mod_revision
            for _ in range(3):
                with pytest.raises(RaftKVError):  # no quorum reachable: no answer at all, so nothing stale
                    got = c.get("k", consistency="linearizable", endpoint=cluster.address(cut), timeout=2)
                    pytest.fail(f"a cut-off follower answered a linearizable read: {got.kv.value!r}")
    finally:
        for i in (leader, other):
            cluster.signal(i, signal.SIGCONT)
    cluster.wait_leader()
    with Client(cluster.address(cut), timeout=10) as c:
        r = c.get("k", endpoint=cluster.address(cut))  # reconnected: linearizable again, and current
        assert r.kv.value == b"v2" and r.meta.consistency_achieved == pb.LINEARIZABLE


def test_bounded_staleness_holds_while_provable_then_fails_or_forwards(cluster: LocalCluster) -> None:
    leader, cut, other = _roles(cluster)
    bound_ms = 1500
    addr = cluster.address(cut)
    with Client(addr, timeout=10) as c:
        c.put("b", "1")

        def fresh() -> pb.GetResponse | None:
            """A bounded read the follower could prove, once it has applied the write.

            Bounded staleness promises no read-your-writes: a follower may prove a small bound from the
            leader's confirmation of a moment before the write committed (the leader tells it of the commit
            with its next append, or a commit-notice delay later), and rightly answer without `b`."""
            try:
                r = c.get("b", consistency="bounded_staleness", max_staleness_ms=bound_ms, strict=True,
                          endpoint=addr)
            except FailedPreconditionError:
                return None
            return r if r.found else None

        wait_for("the follower to apply the write and prove its freshness", fresh)
        cluster.signal(leader, signal.SIGSTOP)
        cluster.signal(other, signal.SIGSTOP)
        cut_at = time.monotonic()
        try:
            # Within the bound: answered locally, and the reply states the bound it proved.
            r = c.get("b", consistency="bounded_staleness", max_staleness_ms=bound_ms, strict=True, endpoint=addr)
            assert r.found and r.kv.value == b"1" and r.meta.served_by == cut
            assert r.meta.consistency_achieved == pb.BOUNDED_STALENESS
            assert 0 < r.meta.staleness_bound_ms <= bound_ms
            time.sleep(0.1)
            # No confirmation can arrive now, so the bound it can prove only grows, on its own clock.
            r2 = c.get("b", consistency="bounded_staleness", max_staleness_ms=bound_ms, endpoint=addr)
            assert r2.meta.served_by == cut
            assert r.meta.staleness_bound_ms + 100 <= r2.meta.staleness_bound_ms <= bound_ms
            time.sleep(max(0.0, bound_ms / 1000 + 0.2 - (time.monotonic() - cut_at)))
            # Past the bound: strict fails at once, without strict it tries the leader (unreachable here).
            with pytest.raises(FailedPreconditionError) as info:
                c.get("b", consistency="bounded_staleness", max_staleness_ms=bound_ms, strict=True, endpoint=addr)
            assert info.value.reason == "STALENESS_BOUND_NOT_MET" and f"node {cut}" in str(info.value)
            with pytest.raises(RaftKVError) as info:
                c.get("b", consistency="bounded_staleness", max_staleness_ms=bound_ms, endpoint=addr, timeout=2)
            assert not isinstance(info.value, FailedPreconditionError)
            # A bound in entries also needs a recent confirmation: an hour-old "0 behind" proves nothing.
            with pytest.raises(FailedPreconditionError):
                c.get("b", consistency="bounded_staleness", max_lag_entries=0, strict=True, endpoint=addr)
        finally:
            for i in (leader, other):
                cluster.signal(i, signal.SIGCONT)
        cluster.wait_leader()
        r = wait_for("a provable bound again", fresh)
        assert r.meta.served_by == cut and r.meta.staleness_bound_ms <= bound_ms


def _toggle(cluster: LocalCluster, node: int, stop: threading.Event) -> None:
    """Pause `node` for 0.4 s, let it run 0.3 s, again and again: a follower that keeps falling behind."""
    while not stop.is_set():
        cluster.signal(node, signal.SIGSTOP)
        stop.wait(0.4)
        cluster.signal(node, signal.SIGCONT)
        stop.wait(0.3)
    cluster.signal(node, signal.SIGCONT)


def test_session_reads_see_own_writes_and_never_go_back_across_nodes(cluster: LocalCluster) -> None:
    leader, lagging, other = _roles(cluster)
    stop = threading.Event()
    theirs = [0]

    def other_writer() -> None:
        with Client(cluster.address(leader), timeout=10) as w:
            while not stop.is_set() and theirs[0] < 2000:
                w.put("theirs", str(theirs[0] + 1))
                theirs[0] += 1

    threads = [threading.Thread(target=_toggle, args=(cluster, lagging, stop)), threading.Thread(target=other_writer)]
    for t in threads:
        t.start()
    served: Counter[int] = Counter()
    try:
        with Client(cluster.endpoints, timeout=10) as c:
            seen_theirs = 0
            token_index = 0
            nodes = [lagging, other, leader]
            for n in range(30):
                c.put("mine", str(n))
                for j, node in enumerate(nodes[n % 3:] + nodes[:n % 3]):
                    key = "mine" if j % 2 == 0 else "theirs"
                    r = c.get(key, consistency="session", endpoint=cluster.address(node), timeout=8)
                    served[r.meta.served_by] += 1
                    assert r.meta.consistency_achieved == pb.SESSION
                    if key == "mine":
                        assert r.kv.value == str(n).encode(), f"read {r.kv.value!r} after writing {n} (node {node})"
                    else:
                        value = int(r.kv.value or b"0")
                        assert value >= seen_theirs, f"went back from {seen_theirs} to {value} on node {node}"
                        seen_theirs = value
                    tok = SessionToken.peek(c.session_token)
                    assert tok is not None and tok.index >= token_index and tok.index <= r.meta.applied_index
                    token_index = tok.index
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    print(f"\nsession reads served by node: {dict(served)} (lagging follower {lagging}, leader {leader})")
    assert served[lagging] + served[other] > 0, "no follower served a session read; nothing was tested there"


def test_concurrent_linearizable_reads_share_quorum_rounds(tmp_path: Path) -> None:
    """300 linearizable reads arrive while the leader's quorum round cannot complete (both followers paused
    until every read waits at the leader, well inside a 2 s election timeout): they all wait for, and then
    share, the next rounds.
    Counted by the leader's raftkv_read_index_rounds_total against raftkv_linearizable_reads_total."""
    cluster = LocalCluster(tmp_path, extra=["--election-ticks", "100"]).start_all()  # a 2 s election timeout
    try:
        leader, f1, f2 = _roles(cluster)
        addr = cluster.address(leader)
        with Client(addr) as c:
            c.put("shared", "1")
        reads = 300

        async def burst() -> tuple[list[pb.GetResponse], dict, dict]:
            async with AsyncClient(addr, timeout=20) as ac:
                await asyncio.gather(*(ac.get("shared", endpoint=addr) for _ in range(20)))  # connection up
                before = scrape(cluster, leader)
                for f in (f1, f2):
                    cluster.signal(f, signal.SIGSTOP)
                try:
                    pending = asyncio.gather(*(ac.get("shared", endpoint=addr) for _ in range(reads)))
                    # Until every read waits at the leader (on a loaded machine they take a while to arrive),
                    # well inside the election timeout.
                    deadline = time.monotonic() + 1.2
                    while time.monotonic() < deadline:
                        m = await asyncio.to_thread(scrape, cluster, leader)
                        if sample(m, "raftkv_overload_usage", resource="read_waiters") >= reads:
                            break
                        await asyncio.sleep(0.05)
                finally:
                    for f in (f1, f2):
                        cluster.signal(f, signal.SIGCONT)
                replies = await pending
                return replies, before, scrape(cluster, leader)

        replies, before, after = asyncio.run(burst())
    finally:
        cluster.stop_all()
    assert all(r.kv.value == b"1" and r.meta.consistency_achieved == pb.LINEARIZABLE and r.meta.served_by == leader
               for r in replies)
    served = sample(after, "raftkv_linearizable_reads_total") - sample(before, "raftkv_linearizable_reads_total")
    rounds = sample(after, "raftkv_read_index_rounds_total") - sample(before, "raftkv_read_index_rounds_total")
    print(f"\n{int(served)} concurrent linearizable reads used {int(rounds)} ReadIndex rounds")
    assert served == reads
    assert 1 <= rounds <= reads / 10, f"{rounds} rounds for {reads} concurrent reads: they are not being batched"


def test_session_token_from_one_cluster_is_refused_by_another(tmp_path: Path) -> None:
    tokens = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        other = LocalCluster(tmp_path / name, n=1).start_all()
        try:
            with other.client() as c:
                if tokens:
                    with pytest.raises(RaftKVError, match="session token does not belong to this cluster"):
                        c.get("x", consistency="session", session_token=tokens[0])
                tokens.append(c.put("x", "1").meta.session_token)
                assert c.get("x", consistency="session", session_token=tokens[-1]).kv.value == b"1"
        finally:
            other.stop_all()
