"""What each scheduled fault does to the simulated cluster (schedule.py draws when and which).

Every decision an event makes at its time (a victim, a partition's cut, a membership change) comes from
the event's own seed and the cluster's state then. Membership changes and leadership transfers go
through the real host's operations (`change_member`, `transfer_leader`), with their checks: a change the
strict reconfiguration check refuses is logged, as an operator would see it refused."""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

from ..core import ConfChange, ConfChangeType
from ..server.members import MemberInfo
from .schedule import Event

if TYPE_CHECKING:
    from .host_run import HostCluster

OP_TIMEOUT_S = 1.0


class Nemesis:
    def __init__(self, cluster: HostCluster) -> None:
        self.c = cluster
        self.applied = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def apply(self, ev: Event) -> None:
        c = self.c
        r = random.Random(ev.seed)
        net = c.world.net
        ids = sorted(c.nodes)
        kind = ev.kind
        if kind != "heal":
            self.applied += 1
        if kind == "heal":
            net.heal()
            for n in c.nodes.values():
                n.space.full = False
            for n in c.nodes.values():
                if not n.up and not n.corrupt:
                    await c.restart(n)
            c.log("heal")
        elif kind in ("crash", "torn-write", "flip-bit"):
            up = c.up()
            if not up:
                return
            leader = c.leader()
            victim = leader if leader is not None and r.random() < 0.5 else r.choice(up)
            assert victim.host is not None
            # A flipped bit keeps its node down for good: only where the others still make a quorum.
            voters = victim.host.node.conf.voters
            c.crash(victim)
            if kind == "flip-bit" and len(voters) >= 3 and not c.flipped and victim.disk.log:
                idx = r.choice(sorted(victim.disk.log))
                victim.disk.flip_bit(idx, r.randrange(64))
                c.flipped.add(victim.id)
                c.log(f"flip a bit of log entry {idx} on node {victim.id}'s disk")
            down = [n for n in c.nodes.values() if not n.up and n is not victim and not n.corrupt
                    and n.id in c.started]
            if down and r.random() < 0.7:
                await c.restart(r.choice(down))  # churn: a node that was down comes back meanwhile
        elif kind == "partition" and len(ids) > 1:
            shuffled = ids[:]
            r.shuffle(shuffled)
            cut = r.randint(1, len(ids) - 1)
            groups = [set(shuffled[:cut]), set(shuffled[cut:])]
            one_way = r.random() < 0.3
            net.partition(groups, one_way=one_way)
            c.log(f"{'one-way ' if one_way else ''}partition {sorted(groups[0])} | {sorted(groups[1])}")
        elif kind == "isolate-leader":
            leader = c.leader()
            if leader is not None:
                net.partition([{leader.id}, set(ids) - {leader.id}])
                c.log(f"isolate leader {leader.id}")
        elif kind == "drop":
            net.faults.drop = r.uniform(0.05, 0.3)
            c.log(f"drop {net.faults.drop:.2f}")
        elif kind == "duplicate":
            net.faults.duplicate = r.uniform(0.05, 0.3)
            c.log(f"duplicate {net.faults.duplicate:.2f}")
        elif kind == "delay":
            net.faults.delay_ms = (0.1, r.choice([5.0, 20.0]))
            c.log(f"delay up to {net.faults.delay_ms[1]} ms")
        elif kind == "disk-full":
            n = r.choice(list(c.nodes.values()))
            n.space.full = True
            c.log(f"node {n.id}'s disk is full")
        elif kind == "membership":
            self._spawn(self._membership(r))
        elif kind == "transfer":
            self._spawn(self._transfer(r))
        # "slow-fsync" is drawn per transaction (DiskFaults.slow_fsync)

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait for the membership changes and transfers still under way (each is bounded)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _membership(self, r: random.Random) -> None:
        """One step of the membership life cycle: add a node outside the cluster as a learner (wiped and
        started with --join first, if it was a member before), promote a learner once it has caught up,
        or remove a voter. Only while no change is under way (the applied configuration is the latest),
        so a node is never wiped while a configuration that counts it may still decide anything."""
        c = self.c
        leader = c.leader()
        if leader is None or leader.host is None:
            return
        host = leader.host
        conf = host.node.conf
        if conf != host.node.conf_as_of(host.applied):
            return
        outside = [n for n in c.nodes.values() if n.id not in conf.members()]
        learners = sorted(conf.learners)
        if learners and r.random() < 0.7:
            change = ConfChange(ConfChangeType.PROMOTE_LEARNER, learners[0])
        elif outside and r.random() < 0.6:
            n = r.choice(outside)
            if n.disk.log or n.removed:
                n.wipe()
                c.flipped.discard(n.id)  # its disk, flipped bit and all, is gone
                c.log(f"wipe removed node {n.id}; it starts again with --join")
            if not n.up:
                await c.restart(n)
            change = ConfChange(ConfChangeType.ADD_LEARNER, n.id, MemberInfo(f"sim-{n.id}:1").encode())
        elif len(conf.voters) > 1:
            change = ConfChange(ConfChangeType.REMOVE_NODE, r.choice(sorted(conf.voters)))
        else:
            return
        what = f"{change.type.name.lower()} {change.node_id}"
        c.log(f"membership: {what} (leader {leader.id})")
        try:
            index, _ = await asyncio.wait_for(host.change_member(change), OP_TIMEOUT_S)
            c.log(f"membership: {what} applied at index {index}")
        except Exception as e:  # noqa: BLE001 - refused or cut short: what an operator would see
            c.log(f"membership: {what} failed: {type(e).__name__}: {e}")

    async def _transfer(self, r: random.Random) -> None:
        c = self.c
        leader = c.leader()
        if leader is None or leader.host is None:
            return
        voters = sorted(leader.host.node.conf.voters - {leader.id})
        if not voters:
            return
        target = r.choice(voters)
        c.log(f"transfer leadership {leader.id} -> {target}")
        try:
            await asyncio.wait_for(leader.host.transfer_leader(target), OP_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - refused: logged
            c.log(f"transfer to {target} refused: {type(e).__name__}: {e}")

