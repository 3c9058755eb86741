"""The data nemeses: a node's data directory wiped, an old copy of it put back, its disk filled, a stored
value corrupted. Each is injected on real files of a real node (data_faults.py, disks.py) and healed so
the cluster can go on:

- wiped or replaced data: the node has forgotten votes and log entries it gave, so it cannot simply
  carry on under its old identity; it is removed from the cluster and added back as a new, empty learner,
  promoted once it has caught up (as an operator must do it);
- a full disk: the filler file is deleted, and a node that stopped is started again (a supervisor's job);
- a corrupted value: right after the node restarts, a probe reads that key from it (what did it serve?);
  on heal, with the node stopped again, the original record is written back if it is still corrupted.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raftkv.client import Client, RaftKVError

from . import data_faults
from .history import History
from .nodes import Node

if TYPE_CHECKING:
    from .nemesis import Faults

DATA = ["wipe-data", "stale-data", "disk-full", "corrupt-value"]


@dataclass
class Injected:
    detail: dict[str, Any]
    heal: Callable[[], None]
    ok: bool = True


class DataNemesis:
    def __init__(self, faults: Faults, history: History, rng: random.Random, hold: tuple[float, float],
                 stop_event: threading.Event) -> None:
        self.f, self.history, self.rng, self.hold, self.stop_event = faults, history, rng, hold, stop_event
        self.probes: list[dict[str, Any]] = []
        """What a node served for a value corrupted on its disk, read right after it restarted."""

    def _victim(self) -> int:
        """A node the data faults may act on: a member now, running."""
        nodes = self.f.cluster.nodes
        slots = [s for s in self.f.slots if nodes[s] not in self.f.removed and nodes[s].alive()]
        return self.rng.choice(slots or self.f.slots)

    def inject(self, kind: str) -> Injected:
        f = self.f
        slot = self._victim()
        if kind == "wipe-data":
            self.f.tainted.add(slot)
            return Injected(self.wipe(slot), lambda: self.replace_member(slot))
        if kind == "stale-data":
            # The copy is taken now; the node runs on (votes, appends, acknowledges) for a while; then the
            # copy replaces what it wrote since.
            copy = self.snapshot_dir(slot)
            self.stop_event.wait(self.rng.uniform(*self.hold) / 2)
            self.f.tainted.add(slot)
            return Injected(self.put_back(slot, copy), lambda: self.replace_member(slot))
        if kind == "disk-full":
            if self.rng.random() < 0.5:
                slot = f.leader_slot()
            detail = self.fill_disk(slot)
            return Injected(detail, lambda: self.free_disk(slot), ok=detail["free_bytes"] < (64 << 10))
        if kind == "corrupt-value":
            return self._corrupt(slot)
        raise ValueError(kind)

    def _corrupt(self, slot: int) -> Injected:
        f = self.f
        node = f.cluster.nodes[slot]
        node.stop()
        try:
            c = data_faults.corrupt_value(node.data_dir, self.rng)
        finally:
            f.restart_same(node)
        probe = {"node": slot, "id": node.id, **c.describe(), "served": self.probe(node, c),
                 "time": round(self.history.now(), 3)}
        self.probes.append(probe)
        self.history.note("nemesis", "probe", probe)

        def heal() -> None:
            node.stop()
            try:
                probe["restore"] = data_faults.restore_value(c)
            finally:
                f.restart_same(node)

        return Injected({k: v for k, v in probe.items() if k != "time"}, heal)

    def probe(self, node: Node, c: data_faults.Corruption, timeout: float = 10.0) -> str:
        """Read the corrupted key from the node itself (serializable: its own state) and say what it served."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        with Client([node.address], timeout=1.0) as client:
            while time.monotonic() < deadline and not self.stop_event.is_set():
                if not node.alive():
                    return f"node exited with code {node.exit_code()}"
                try:
                    r = client.get(c.key, consistency="serializable", endpoint=node.address, timeout=1.0)
                except RaftKVError as e:
                    last = f"refused: {e.code.name if e.code else type(e).__name__}: {str(e)[:120]}"
                    if e.code is not None and e.code.name in ("DATA_LOSS", "INTERNAL", "FAILED_PRECONDITION"):
                        return last
                    time.sleep(0.2)
                    continue
                if not r.found:
                    return "missing"
                same_record = c.mod_revision is None or r.kv.mod_revision == c.mod_revision
                if r.kv.value == c.bad_value and same_record:
                    return "corrupted"
                if r.kv.value == c.value and same_record:
                    return "original"
                return "updated"
        return last

    def _settle(self, node: Node, seconds: float = 2.0) -> int | None:
        """Give a restarted node a moment; its exit code if it refused to start, else None."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and node.alive():
            time.sleep(0.1)
        return node.exit_code()

    def wipe(self, slot: int) -> dict[str, Any]:
        """kill -9, the data directory deleted, the node started again as it was (same id and flags)."""
        node = self.f.cluster.nodes[slot]
        node.kill()
        data_faults.wipe_dir(node.data_dir)
        self.f.restart_same(node)
        return {"node": slot, "id": node.id, "exit": self._settle(node)}

    def snapshot_dir(self, slot: int) -> Path:
        """Stop the node, copy its data directory, start it again; returns the copy."""
        node = self.f.cluster.nodes[slot]
        node.stop()
        copy = self.f.cluster.root / "stale-copies" / f"{node.data_dir.name}-{int(time.monotonic() * 1000)}"
        data_faults.copy_dir(node.data_dir, copy)
        self.f.restart_same(node)
        return copy

    def put_back(self, slot: int, copy: Path) -> dict[str, Any]:
        """kill -9, then the old copy replaces the node's data directory, and the node starts again."""
        node = self.f.cluster.nodes[slot]
        node.kill()
        data_faults.put_back(copy, node.data_dir)
        self.f.restart_same(node)
        return {"node": slot, "id": node.id, "copy": copy.name, "exit": self._settle(node)}

    def replace_member(self, slot: int) -> None:
        """The only safe way back for a node that lost or replaced its data: remove it and add it anew.
        If no leader accepts either now, `heal_all` retries the re-add."""
        node = self.f.cluster.nodes[slot]
        self.f.tainted.add(slot)
        if node in self.f.removed:
            self.f.tainted.discard(slot)
            return
        if not self.f.remove_member(slot):
            raise RuntimeError(f"could not remove member {node.id} (slot {slot})")
        self.f.tainted.discard(slot)
        if not self.f.add_back(node):
            raise RuntimeError(f"member {node.id} removed, not yet added back (the final heal retries)")

    def fill_disk(self, slot: int) -> dict[str, Any]:
        if self.f.disks is None:
            raise RuntimeError("disk-full needs the nodes' data on their own filesystems (Disks)")
        free = self.f.disks.fill(slot)
        return {"node": slot, "free_bytes": free}

    def free_disk(self, slot: int) -> None:
        assert self.f.disks is not None
        self.f.disks.free(slot)
        node = self.f.cluster.nodes[slot]
        if node not in self.f.removed and not node.paused and not node.alive():
            self.f.restart_same(node)  # a node that stopped on the full disk is restarted, as a supervisor would

