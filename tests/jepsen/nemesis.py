"""Faults, and schedules that compose them from a seed.

A fault is injected, held for a while, then healed; each one is recorded in the history as a window
(`nemesis` start/end events) so checkers and plots can relate anomalies and latency to it. `heal_all`
restores everything (network, paused and dead processes, removed members) before the final read phase.

Data faults (data_faults.py) act on a stopped node's files: its directory wiped, an old copy of it put
back, a stored value's bytes flipped, or its own small filesystem (disks.py) filled. A node whose data
was wiped or replaced is healed the way an operator must do it: removed from the cluster and added back
as a new, empty learner that is promoted once it has caught up. A corrupted value is put back as it was.

Every window records whether its fault was really injected (`ok`) and healed (`healed`), so a run whose
faults all failed to happen cannot pass for a run that survived them.

Network faults are iptables DROP rules in the receiving node's own namespace (INPUT, by source address),
so a partition cuts established connections too; the clients (on the bridge address) can always reach
every node, as in Jepsen: the interesting question is what an isolated node answers.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raftkv.client import Client, RaftKVError

from .data_nemesis import DATA, DataNemesis
from .disks import Disks
from .history import History
from .nodes import Cluster, Node

NETWORK = ["partition-halves", "partition-leader-minority", "isolate-leader", "bridge", "one-way"]
PROCESS = ["kill", "kill-leader", "pause", "pause-leader"]
OTHER = ["membership", "transfer"]
KINDS = NETWORK + PROCESS + OTHER
NEMESES = ["none", *KINDS, "mixed", *DATA, "mixed-data"]
WITNESS_NEMESES = ["kill-data"]
"""For witness topologies (witness_topology.py): kill -9 any one data node, restart it at the heal. Not in
NEMESES, so that the default matrix and the `mixed` picks stay as they are."""
NEEDS_DISKS = {"disk-full", "mixed-data"}
"""Nemeses that need every node's data on a small filesystem of its own."""


@dataclass
class Fault:
    kind: str
    detail: dict[str, Any]
    heal: Callable[[], None]
    ok: bool = True
    """False when the fault could not be injected (it raised, or found nothing to act on)."""
    start: float = 0.0
    end: float | None = None


@dataclass
class Window:
    kind: str
    start: float
    end: float
    detail: dict[str, Any] = field(default_factory=dict)
    ok: bool = True
    healed: bool = True


class Faults:
    """The primitive faults on one cluster, and what undoes each."""

    def __init__(self, cluster: Cluster, rng: random.Random, disks: Disks | None = None) -> None:
        self.cluster = cluster
        self.topo = cluster.topo
        self.rng = rng
        self.disks = disks
        self.removed: list[Node] = []
        self.unpromoted: list[int] = []
        self.tainted: set[int] = set()
        """Slots whose node lost or replaced its data and still has to be removed and added back."""
        self._admin: Client | None = None

    # -- helpers -------------------------------------------------------------------------------
    @property
    def slots(self) -> list[int]:
        return sorted(self.cluster.nodes)

    def admin(self) -> Client:
        if self._admin is None:
            self._admin = Client(self.cluster.endpoints, timeout=3.0)
        return self._admin

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    def leader_slot(self) -> int:
        node = self.cluster.leader()
        return node.slot if node is not None else self.rng.choice(self.slots)

    # -- network -------------------------------------------------------------------------------
    def drop(self, receiver: int, sender: int) -> None:
        self.topo.iptables_in(receiver, "-A", "INPUT", "-s", self.topo.ip(sender), "-j", "DROP")

    def partition(self, components: list[set[int]]) -> None:
        """Nodes talk only within their component."""
        for comp in components:
            for i in comp:
                for j in self.slots:
                    if j not in comp:
                        self.drop(i, j)

    def heal_network(self) -> None:
        for i in self.slots:
            self.topo.flush_rules(i)

    def halves(self) -> dict[str, Any]:
        s = self.slots[:]
        self.rng.shuffle(s)
        a, b = set(s[: len(s) // 2]), set(s[len(s) // 2:])
        self.partition([a, b])
        return {"minority": sorted(a), "majority": sorted(b)}

    def leader_minority(self) -> dict[str, Any]:
        lead = self.leader_slot()
        others = [s for s in self.slots if s != lead]
        self.rng.shuffle(others)
        minority = {lead, *others[: len(self.slots) // 2 - 1]}
        self.partition([minority, set(self.slots) - minority])
        return {"minority": sorted(minority), "leader": lead}

    def isolate_leader(self) -> dict[str, Any]:
        lead = self.leader_slot()
        self.partition([{lead}, set(self.slots) - {lead}])
        return {"isolated": lead}

    def bridge(self) -> dict[str, Any]:
        s = self.slots[:]
        self.rng.shuffle(s)
        mid = s[0]
        rest = s[1:]
        a, b = set(rest[: len(rest) // 2]), set(rest[len(rest) // 2:])
        for i in a:
            for j in b:
                self.drop(i, j)
                self.drop(j, i)
        return {"bridge": mid, "sides": [sorted(a), sorted(b)]}

    def one_way(self) -> dict[str, Any]:
        lead = self.leader_slot()
        others = [s for s in self.slots if s != lead]
        if self.rng.random() < 0.5:
            for o in others:  # the leader hears nobody; everyone still hears the leader
                self.drop(lead, o)
            return {"deaf": lead}
        for o in others:  # nobody hears the leader; the leader still hears everyone
            self.drop(o, lead)
        return {"mute": lead}

    # -- processes -----------------------------------------------------------------------------
    def restart(self, node: Node) -> None:
        if node in self.removed:
            return
        node.resume()
        if not node.alive():
            self.restart_same(node)

    def kill(self, slot: int) -> Callable[[], None]:
        node = self.cluster.nodes[slot]
        node.kill()
        return lambda: self.restart(node)

    def pause(self, slot: int) -> Callable[[], None]:
        node = self.cluster.nodes[slot]
        node.pause()
        return node.resume

    def restart_same(self, node: Node) -> None:
        """Start a stopped node again on its data directory, with the flags it was first started with."""
        node.start(None if node.id > self.topo.n else self.cluster.founding_peers_original)

    # -- membership and leadership -------------------------------------------------------------
    def remove_member(self, slot: int) -> bool:
        """Remove the node in `slot` from the cluster and stop it. True if it is out."""
        node = self.cluster.nodes[slot]
        try:
            self.admin().member_remove(node.id)
        except RaftKVError:
            try:
                ids = {m.id for m in self.admin().members().members}
            except RaftKVError:
                ids = {node.id}
            if node.id in ids:
                return False
        node.stop()
        self.removed.append(node)
        return True

    def add_back(self, node: Node) -> bool:
        """A removed node returns empty, under a new id: added as a learner, started with --join, and
        promoted once it has caught up (a voter that cannot vote yet only weakens the quorum)."""
        new_id = self.cluster.next_id
        if not self._add_learner(new_id, node.address, node.peer_address):
            return False
        self.cluster.next_id += 1
        node.wipe(new_id)
        node.start(None)
        self.removed.remove(node)
        if not self.promote(node):
            self.unpromoted.append(node.id)
        return True

    def _add_learner(self, new_id: int, address: str, peer_address: str = "", timeout: float = 10.0) -> bool:
        """Add a learner, retrying a little while the previous membership change is still settling."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.admin().member_add(new_id, address, learner=True, peer_address=peer_address)
                return True
            except RaftKVError:
                try:
                    if {m.id: m.address for m in self.admin().members().members}.get(new_id) == address:
                        return True  # it was added, the answer was lost
                except RaftKVError:
                    pass
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.3)

    def promote(self, node: Node, timeout: float = 30.0) -> bool:
        """Promote a learner once it has applied what the leader had committed when it was added."""
        deadline = time.monotonic() + timeout
        target = None
        while time.monotonic() < deadline:
            try:
                if target is None:
                    target = self.admin().status().commit
                if self.cluster.status(node, 1.0).applied >= target:
                    self.admin().member_promote(node.id)
                    return True
            except RaftKVError:
                try:
                    if any(m.id == node.id and not m.learner for m in self.admin().members().members):
                        return True
                except RaftKVError:
                    pass
            time.sleep(0.3)
        return False

    def transfer(self) -> dict[str, Any]:
        lead = self.cluster.leader()
        targets = [n for n in self.cluster.nodes.values() if n is not lead and n not in self.removed and n.alive()]
        if lead is None or not targets:
            return {"skipped": "no leader"}
        target = self.rng.choice(targets)
        try:
            self.admin().transfer_leader(target.id)
            return {"from": lead.id, "to": target.id}
        except RaftKVError as e:
            return {"from": lead.id, "to": target.id, "error": str(e)[:120]}


class Nemesis:
    """Injects faults of the given kinds on a seeded schedule: quiet for a while, one fault held for a
    while, healed; repeat until stopped."""

    def __init__(self, cluster: Cluster, history: History, kind: str, seed: int, quiet: tuple[float, float] = (1.0, 2.0),
                 hold: tuple[float, float] = (2.0, 4.0), disks: Disks | None = None) -> None:
        if kind not in NEMESES + WITNESS_NEMESES:
            raise ValueError(f"unknown nemesis {kind!r}; choose from {', '.join(NEMESES + WITNESS_NEMESES)}")
        self.cluster, self.history, self.kind = cluster, history, kind
        self.rng = random.Random(seed)
        self.faults = Faults(cluster, self.rng, disks)
        self.quiet, self.hold = quiet, hold
        self.windows: list[Window] = []
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.errors: list[str] = []
        self.data = DataNemesis(self.faults, history, self.rng, hold, self.stop_event)

    def pick(self) -> str:
        if self.kind == "mixed":
            return self.rng.choice(KINDS)
        if self.kind == "mixed-data":
            return self.rng.choice(KINDS + DATA)
        return self.kind

    def inject(self, kind: str) -> Fault:
        f = self.faults
        if kind == "partition-halves":
            return Fault(kind, f.halves(), f.heal_network)
        if kind == "partition-leader-minority":
            return Fault(kind, f.leader_minority(), f.heal_network)
        if kind == "isolate-leader":
            return Fault(kind, f.isolate_leader(), f.heal_network)
        if kind == "bridge":
            return Fault(kind, f.bridge(), f.heal_network)
        if kind == "one-way":
            return Fault(kind, f.one_way(), f.heal_network)
        if kind in DATA:
            d = self.data.inject(kind)
            return Fault(kind, d.detail, d.heal, ok=d.ok)
        if kind == "kill-data":
            slot = self.rng.choice(self.cluster.data_slots)
            return Fault(kind, {"node": slot}, f.kill(slot))
        if kind in ("kill", "pause"):
            slot = self.rng.choice(f.slots)
        elif kind in ("kill-leader", "pause-leader"):
            slot = f.leader_slot()
        if kind in ("kill", "kill-leader"):
            return Fault(kind, {"node": slot}, f.kill(slot))
        if kind in ("pause", "pause-leader"):
            return Fault(kind, {"node": slot}, f.pause(slot))
        if kind == "membership":
            # The change happens during a fault: first cut one random follower off, then remove a
            # random node through whichever leader the rest agree on.
            cut = self.rng.choice(f.slots)
            f.partition([{cut}, set(f.slots) - {cut}])
            victim = self.rng.choice(f.slots)
            removed = f.remove_member(victim)
            detail = {"cut": cut, "remove": victim, "removed": removed}

            def heal() -> None:
                f.heal_network()
                for node in list(f.removed):
                    f.add_back(node)

            return Fault(kind, detail, heal, ok=removed)
        if kind == "transfer":
            detail = f.transfer()
            return Fault(kind, detail, lambda: None, ok="error" not in detail and "skipped" not in detail)
        raise ValueError(kind)

    def _run(self) -> None:
        while not self.stop_event.wait(self.rng.uniform(*self.quiet)):
            kind = self.pick()
            start = self.history.now()
            try:
                fault = self.inject(kind)
            except Exception as e:  # noqa: BLE001 - a fault that could not be injected is reported, not fatal
                self.errors.append(f"{kind}: {type(e).__name__}: {e}")
                fault = Fault(kind, {"error": str(e)[:200]}, self.faults.heal_network, ok=False)
            self.history.note("nemesis", "start", {"fault": kind, "ok": fault.ok, **fault.detail})
            self.stop_event.wait(self.rng.uniform(*self.hold))
            healed = True
            try:
                fault.heal()
            except Exception as e:  # noqa: BLE001
                healed = False
                self.errors.append(f"heal {kind}: {type(e).__name__}: {e}")
            end = self.history.now()
            self.history.note("nemesis", "end", {"fault": kind, "healed": healed})
            self.windows.append(Window(kind, start, end, fault.detail, ok=fault.ok, healed=healed))

    def start(self) -> None:
        if self.kind == "none":
            return
        self.thread = threading.Thread(target=self._run, name="nemesis", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(120)

    def heal_all(self, timeout: float = 60.0) -> None:
        """Undo everything: network, pauses, full disks, dead processes, removed members (retrying re-adds
        until a leader accepts them)."""
        f = self.faults
        f.heal_network()
        if f.disks is not None:
            for slot in f.slots:
                f.disks.free(slot)
        for node in self.cluster.nodes.values():
            f.restart(node)
        if f.disks is not None:
            # A node may still stop a moment after its disk was freed: a full ext4 can fail an fsync that
            # was already under way with EIO, and the node then exits RETRY. Restart such a node, as a
            # supervisor would, until every node has stayed up for a while.
            settle, give_up = time.monotonic() + 3.0, time.monotonic() + timeout
            while time.monotonic() < min(settle, give_up):
                for node in self.cluster.nodes.values():
                    if node not in f.removed and not node.alive():
                        f.restart(node)
                        settle = time.monotonic() + 3.0
                time.sleep(0.2)
        deadline = time.monotonic() + timeout
        while (f.removed or f.tainted) and time.monotonic() < deadline:
            for slot in sorted(f.tainted):
                try:
                    self.data.replace_member(slot)
                except RuntimeError:
                    pass
            for node in list(f.removed):
                f.add_back(node)
            if f.removed or f.tainted:
                time.sleep(0.5)
        if f.removed or f.tainted:
            raise AssertionError(f"could not add back removed nodes {[n.slot for n in f.removed]} "
                                 f"or replace nodes with lost data {sorted(f.tainted)}")
        self.history.note("nemesis", "healed", {"unpromoted": f.unpromoted})

    @property
    def fault_count(self) -> int:
        return len(self.windows)

    @property
    def probes(self) -> list[dict[str, Any]]:
        return self.data.probes

    @property
    def injected(self) -> int:
        """Windows whose fault really happened and was undone."""
        return sum(1 for w in self.windows if w.ok and w.healed)

    def close(self) -> None:
        self.faults.close()
