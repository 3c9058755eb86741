"""Read consistency levels under a real network partition (nodes in namespaces, links cut by iptables).

- A leader isolated in a minority never serves a linearizable read once the majority has elected
  another leader (its ReadIndex round cannot reach a quorum, and it has no leader to forward to).
- A follower cut off from the leader: serializable reads answer with its stale state; linearizable
  reads there do not answer stale data; bounded-staleness reads answer while the node can still prove
  the bound, then fail (strict) or do not answer stale data (forward), and answer fresh data again once
  the link is back (after waiting to catch up or forwarding).
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from raftkv.client import Client, FailedPreconditionError, RaftKVError

from .nemesis import Faults
from .nodes import Cluster, Node


def _value(rep) -> str | None:  # noqa: ANN001
    return rep.kv.value.decode() if rep.found else None


def _wait_applied(cluster: Cluster, node: Node, key: str, value: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _value(cluster.client(node.address).get(key, consistency="serializable", endpoint=node.address,
                                                       timeout=1)) == value:
                return
        except RaftKVError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"node {node.id} never applied {key}={value}")


def test_isolated_leader_in_minority_never_serves_linearizable_reads(ns_cluster: Cluster) -> None:
    cluster = ns_cluster
    faults = Faults(cluster, random.Random(5))
    with Client(cluster.endpoints, timeout=10) as c:
        c.put("x", "old")
    old = cluster.wait_leader()
    minority = {old.slot, next(s for s in cluster.nodes if s != old.slot)}
    majority = [cluster.nodes[s] for s in cluster.nodes if s not in minority]
    # not vacuous: before the cut, the leader serves linearizable reads
    assert _value(cluster.client(old.address).get("x", endpoint=old.address, timeout=2)) == "old"

    reads: list[tuple[float, int, str, str | None]] = []  # (start, slot, outcome, value)
    stop = threading.Event()

    def hammer(node: Node) -> None:
        with Client([node.address], timeout=0.5) as c:
            while not stop.is_set():
                t = time.monotonic()
                try:
                    reads.append((t, node.slot, "ok", _value(c.get("x", endpoint=node.address, timeout=0.5))))
                except RaftKVError as e:
                    reads.append((t, node.slot, type(e).__name__, None))
                time.sleep(0.02)

    faults.partition([minority, set(cluster.nodes) - minority])
    threads = [threading.Thread(target=hammer, args=(cluster.nodes[s],), daemon=True) for s in minority]
    for t in threads:
        t.start()
    try:
        # the majority elects a new leader and takes a write
        deadline = time.monotonic() + 30
        new = None
        while new is None and time.monotonic() < deadline:
            for n in majority:
                try:
                    st = cluster.status(n)
                except RaftKVError:
                    continue
                if st.role == "leader":
                    new = n
            time.sleep(0.05)
        assert new is not None, f"the majority elected no leader\n{cluster.log_tails(majority)}"
        elected = time.monotonic()
        with Client([n.address for n in majority], timeout=10) as c:
            c.put("x", "new")
            assert _value(c.get("x")) == "new"
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        faults.heal_network()
    after = [r for r in reads if r[0] >= elected]
    assert len(after) >= 10, f"too few reads attempted on the minority side: {len(after)}"
    served = [r for r in after if r[2] == "ok"]
    assert served == [], f"the minority served linearizable reads after the majority elected node {new.id}: {served[:5]}"
    # healed: the old leader's side answers again, with the majority's write
    deadline = time.monotonic() + 30
    while True:
        try:
            assert _value(cluster.client(old.address).get("x", timeout=2)) == "new"
            break
        except RaftKVError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


BOUND_MS = 1500


def test_follower_cut_off_from_the_leader(ns_cluster: Cluster) -> None:
    cluster = ns_cluster
    faults = Faults(cluster, random.Random(6))
    leader = cluster.wait_leader()
    f = next(n for n in cluster.nodes.values() if n is not leader)
    others = [n for n in cluster.nodes.values() if n is not f]
    with Client(cluster.endpoints, timeout=10) as c:
        c.put("x", "1")
    _wait_applied(cluster, f, "x", "1")
    fc = Client([f.address], timeout=1)

    def bounded(strict: bool, bound: int = BOUND_MS):  # noqa: ANN202
        return fc.get("x", consistency="bounded_staleness", max_staleness_ms=bound, strict=strict,
                      endpoint=f.address, timeout=1)

    # Fresh, the follower proves a tight bound and serves bounded reads itself.
    rep = bounded(strict=True)
    assert rep.meta.served_by == f.id and _value(rep) == "1" and rep.meta.staleness_bound_ms <= BOUND_MS

    faults.partition([{f.slot}, set(cluster.nodes) - {f.slot}])
    cut = time.monotonic()
    try:
        with Client([n.address for n in others], timeout=10) as c:
            c.put("x", "2")
            assert _value(c.get("x")) == "2"

        # bounded staleness: answers while the bound holds, then strict reads fail
        outcomes: list[tuple[float, str, float]] = []
        while time.monotonic() - cut < BOUND_MS / 1000 + 1.0:
            t = time.monotonic() - cut
            try:
                rep = bounded(strict=True)
                assert (rep.meta.served_by, _value(rep)) == (f.id, "1")
                assert rep.meta.staleness_bound_ms <= BOUND_MS
                outcomes.append((t, "ok", rep.meta.staleness_bound_ms))
            except FailedPreconditionError as e:
                assert e.reason == "STALENESS_BOUND_NOT_MET"
                outcomes.append((t, "stale", 0.0))
            time.sleep(0.05)
        ok = [o for o in outcomes if o[1] == "ok"]
        assert ok, f"no bounded read answered within the bound after the cut: {outcomes[:5]}"
        # the proof dates from before the cut: nothing can be served once the bound has passed since it
        assert all(t <= BOUND_MS / 1000 + 0.05 for t, _, _ in ok), ok[-3:]
        assert outcomes[-1][1] == "stale"
        first_stale = next(i for i, o in enumerate(outcomes) if o[1] == "stale")
        assert all(o[1] == "stale" for o in outcomes[first_stale:]), "a proof got fresher while cut off"

        # serializable: answers, stale
        rep = fc.get("x", consistency="serializable", endpoint=f.address, timeout=1)
        assert (rep.meta.served_by, _value(rep)) == (f.id, "1")

        # linearizable: never the stale value
        for _ in range(5):
            with pytest.raises(RaftKVError):
                got = _value(fc.get("x", endpoint=f.address, timeout=1))
                raise AssertionError(f"a cut-off follower answered a linearizable read with {got!r}")

        # not strict: the node waits, then forwards to the leader it cannot reach; never the stale value
        with pytest.raises(RaftKVError):
            got = _value(bounded(strict=False))
            raise AssertionError(f"non-strict bounded read past the bound answered {got!r}")
        # a generous bound still holds, and is answered locally (stale but within what was asked)
        rep = bounded(strict=True, bound=60_000)
        assert (rep.meta.served_by, _value(rep)) == (f.id, "1")
    finally:
        faults.heal_network()

    # healed: the follower catches up, and bounded and linearizable reads there see the new value
    deadline = time.monotonic() + 30
    while True:
        try:
            assert _value(bounded(strict=False)) == "2"
            assert _value(fc.get("x", endpoint=f.address, timeout=2)) == "2"
            break
        except (RaftKVError, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    fc.close()
