"""NodeHost's membership and leadership operations: membership changes (checked by reconfig_check.py,
placed through the proposal queue), leadership transfer, the transport's peers following the member
registry, and noticing this node's own removal (removal.py)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..core import ConfChange, ConfChangeRejected, RaftNode
from .config import ServerConfig
from .lag import LagMonitor
from .members import MemberInfo, MemberRegistry
from .ports import Clock, PeerTransport
from .proposals import ConfRequest, ProposalQueue
from .reconfig_check import ClusterView, MemberHealth, check_change, check_transfer
from .removal import Removal
from .stamps import StalenessStamps


class MembershipOps:
    """Part of NodeHost (host.py): changing who the members are."""

    cfg: ServerConfig
    node: RaftNode
    clock: Clock
    members: MemberRegistry
    lag: LagMonitor
    transport: PeerTransport
    proposals: ProposalQueue
    removal: Removal
    stamps: StalenessStamps
    _wake: asyncio.Event
    _lingering_peers: bool

    if TYPE_CHECKING:  # the rest of NodeHost, as this part uses it
        @property
        def is_leader(self) -> bool: ...

        def not_leader(self) -> Exception: ...

        def _refuse_writes_without_space(self) -> None: ...

        def run_in_loop(self, op: Any) -> None: ...

        def _fail_everything(self, err: Exception) -> None: ...

    async def change_member(self, change: ConfChange) -> tuple[int, int]:
        """Propose a membership change and wait until it is applied here. Refused (ConfChangeRejected) if
        it would leave fewer healthy members than the new configuration needs (`reconfig_check`)."""
        self._refuse_writes_without_space()
        if not self.is_leader:
            raise self.not_leader()
        address = MemberInfo.decode(change.context).address if change.context else ""
        check_change(change, self.reconfig_view(), address)
        loop = asyncio.get_running_loop()
        placed: asyncio.Future[tuple[int, int]] = loop.create_future()
        applied: asyncio.Future[Any] = loop.create_future()
        self.proposals.add_conf_change(ConfRequest(change, placed, applied))
        self._wake.set()
        index, term = await placed
        await applied
        return index, term

    def reconfig_view(self) -> ClusterView:
        """What the strict reconfiguration check needs: per member, its match index and when the leader
        last heard from it (core progress and the lag monitor)."""
        st = self.node.status()
        now = self.clock.monotonic()
        contact = self.lag.last_contact
        health = {nid: MemberHealth(p.match, (now - contact[nid]) if nid in contact else None, p.recent_active)
                  for nid, p in st.progress.items() if nid != self.cfg.id}
        addresses = {nid: info.address for nid, info in self.members.all().items() if info.address}
        return ClusterView(self.cfg.id, st.conf, st.last_index, self.cfg.election_ticks * self.cfg.tick_ms / 1000,
                           health, addresses)

    async def transfer_leader(self, target: int) -> None:
        if target not in self.node.conf.voters:
            raise ConfChangeRejected(f"node {target} is not a voter")
        if target in self.node.conf.witnesses:
            raise ConfChangeRejected(f"node {target} is a witness: it holds no data and cannot lead")
        if self.is_leader:
            check_transfer(target, self.reconfig_view())
        self.run_in_loop(lambda: self.node.transfer_leader(target))

    def forget_member_progress(self, node_id: int) -> None:
        """A member's data was replaced: drop what this leader knew of its log and of its lag."""
        self.node.forget_progress(node_id)
        self.forget_member_lag(node_id)
        self.stamps.forget(node_id)

    def forget_member_lag(self, node_id: int) -> None:
        """Drop what was heard from a member (applied index, last contact): it was removed, re-added or
        replaced, and what its previous self said no longer holds."""
        self.lag.applied.pop(node_id, None)
        self.lag.last_contact.pop(node_id, None)

    # Peers and removal from the cluster (see removal.py)
    # ------------------------------------------------------------------------------------------
    def _sync_transport_peers(self) -> None:
        members = self.members.all()
        for nid, info in members.items():
            if nid != self.cfg.id and info.address:
                self.transport.add_peer(nid, info.address, info.peer_address)
        departing = self.node.departing()  # still to be told they were removed: keep their connections
        self._lingering_peers = bool(departing)
        for nid in self.transport.peer_ids():
            if nid not in members and nid not in departing:
                self.transport.remove_peer(nid)

    def _on_removed(self, how: str) -> None:
        if self.removal.note(how):
            self._fail_everything(self.removal.error())

    def peer_refused(self, peer: int, reason: str) -> None:
        """The transport's report that `peer` refused our stream because we are not a member."""
        if not self.removal.removed and self.removal.refused_by(peer, self.node.conf.voters):
            self._on_removed(f"peers refuse it as a non-member: {reason}")

    def _check_removed(self) -> None:
        if self._lingering_peers and not self.node.departing():
            self._sync_transport_peers()
        if not self.removal.removed and self.node.removed_at():
            self._on_removed(f"the leader says it is not in the configuration at index {self.node.removed_at()}")
