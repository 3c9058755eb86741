"""Which peers may speak Raft to this node, and the cluster's record of who its members are.

The transport asks this guard about every batch (`check`), after its own checks of the connection's
certificate and of the messages' senders. A batch is refused:

- FAILED_PRECONDITION when it belongs to another cluster: a cluster id other than ours. A batch with no
  cluster id once ours is known comes from a member that has not learned the id yet: only its answers are
  delivered (see ANSWERS), its requests are dropped;
- PERMISSION_DENIED when its sender is no member, or (with peer certificates) the connection's
  certificate does not name the host of the member it claims to be. One exception: while this node has no
  leader (or follows that sender), the appends, heartbeats and snapshots of a sender it does not know, with
  this cluster's id, are taken: that sender was added while this node was down and now leads, and this
  node learns of it only from those appends;
- FAILED_PRECONDITION when the sender's incarnation is not the one the cluster recorded for it: its data
  directory was wiped or replaced, so it has forgotten its term, vote and log and must neither vote nor
  count for commit. The leader also forgets what it knew of that member's log. And a node that receives a
  batch naming another incarnation for itself learns that *it* is the replaced one: it refuses the batch,
  logs it once and reports not ready until an operator removes and re-adds it.

Incarnations are recorded through the log: the leader proposes an identity record (an UPDATE_NODE change
whose context lists incarnations, see members.py) the first time it hears a member whose incarnation is
not recorded yet, and, for a cluster founded without `--initial-cluster-token`, the first leader also
chooses the cluster id at random in its first record. Until a node has applied that record it stamps its
batches with the id from the newest record in its log, so followers that appended it speak with the new
id at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
import structlog

from ..core import (
    NONE,
    ConfChange,
    ConfChangeRejected,
    ConfChangeType,
    Entry,
    EntryType,
    MessageType,
    ProposalDropped,
)
from ..proto.stubs import raft_pb2 as pb
from ..storage.identity import new_cluster_id, short
from ..tls import PeerIdentity, PeerRefusal
from .members import decode_identity_record, identity_record

if TYPE_CHECKING:
    from .host import NodeHost

log = structlog.get_logger("raftkv.identity")

RETRY_SECONDS = 0.2
"""How soon a leader tries again to propose an identity record the core refused for now."""
REFUSAL_MEMORY_SECONDS = 10.0
"""A peer's refusal of our stream counts against readiness this long: a refusal that persists is renewed
by every attempt (a node with something to say retries within a second), one that was resolved fades."""
DROP_LOG_SECONDS = 60.0
"""Requests dropped from one member without cluster id are logged at most this often."""
ANSWERS = frozenset({MessageType.APP_RESP, MessageType.HEARTBEAT_RESP, MessageType.VOTE_RESP,
                     MessageType.PRE_VOTE_RESP, MessageType.READ_INDEX_RESP})
"""What a member that has not learned the cluster id yet may send: answers, never requests. It learns the
id from the leader's appends, and the leader must hear its answers to send them."""
LEADER_MESSAGES = frozenset({MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP})
"""What a leader that this node's configuration does not list yet may send it (see
`_leader_of_a_newer_configuration`)."""


class IdentityGuard:
    def __init__(self, node_id: int, store: object, join: bool, host: Callable[[], NodeHost] | None = None) -> None:
        """The host this guard serves is bound by the host itself (`NodeHost(identity=...)`), so the guard
        can be built first and handed to the transport as its gate."""
        self.node_id = node_id
        self._store = store
        self._join = join
        self._bound: NodeHost | None = None
        self._host: Callable[[], NodeHost] = host or self._bound_host
        self.incarnation: bytes = store.incarnation  # type: ignore[attr-defined]
        self.heard: dict[int, bytes] = {}
        """Leader: incarnations heard from members that have none recorded yet."""
        self._replaced_seen: set[tuple[int, bytes]] = set()
        self._own_problem = ""
        self._refused_by: dict[int, tuple[str, float]] = {}
        self._log_cluster_id = b""
        self._chosen_cluster_id = b""
        self._record_index = 0
        self._record_term = 0
        self._retry_at = 0.0
        self._dropped_logged: dict[int, float] = {}
        self._peer_address_logged: dict[tuple[int, str, str], float] = {}
        self._stranger_logged: dict[int, float] = {}

    # ------------------------------------------------------------------------------------------
    # What an operator sees
    # ------------------------------------------------------------------------------------------
    @property
    def problem(self) -> str:
        """Why this node cannot serve as a member ("" = nothing known against it)."""
        if self._own_problem:
            return self._own_problem
        now = time.monotonic()
        for peer, (reason, at) in sorted(self._refused_by.items()):
            if now - at < REFUSAL_MEMORY_SECONDS:
                return f"node {peer} refuses this node: {reason}"
        return ""

    @property
    def cluster_id(self) -> bytes:
        return self._store.cluster_id  # type: ignore[attr-defined,no-any-return]

    # ------------------------------------------------------------------------------------------
    # PeerGate: what the transport asks
    # ------------------------------------------------------------------------------------------
    def bind(self, host: NodeHost) -> None:
        self._bound = host

    def _bound_host(self) -> NodeHost:
        assert self._bound is not None, "the identity guard is used before its host was built"
        return self._bound

    def header_cluster_id(self) -> bytes:
        """The cluster id our batches carry: the one recorded, else the one in our log's newest record."""
        return self.cluster_id or self._log_cluster_id

    def outgoing(self, to: int) -> tuple[bytes, bytes]:
        return self.incarnation, self._host().members.incarnation_of(to)

    def adopt_from_leader(self, cluster_id: bytes) -> None:
        """A joining node learns its cluster id from the first member that streams to it."""
        if self._join:
            self._store.adopt_cluster_id(cluster_id)  # type: ignore[attr-defined]

    def check(self, batch: pb.MessageBatch, peer: PeerIdentity | None) -> PeerRefusal | None:
        host = self._host()
        me = self.node_id
        sender = getattr(batch, "from")
        members = host.members
        knows_members = bool(members.all()) or bool(host.node.conf.members())
        stranger = knows_members and not members.is_member(sender) and sender not in host.node.conf.members()
        if stranger and not self._leader_of_a_newer_configuration(batch, sender):
            return PeerRefusal(grpc.StatusCode.PERMISSION_DENIED,
                               f"node {sender} is not a member of this cluster (members: "
                               f"{', '.join(map(str, sorted(members.all())))})")
        recorded = members.incarnation_of(sender)
        ours = self.cluster_id
        if peer is not None:
            info = members.get(sender)
            address = info.address if info is not None and info.address else batch.from_address
            peer_host = address.rpartition(":")[0]
            if not peer_host or not peer.names_host(peer_host):
                return PeerRefusal(grpc.StatusCode.PERMISSION_DENIED,
                                   f"the certificate of this connection ({peer.describe()}) is not node {sender}'s: "
                                   f"it does not name {peer_host or 'its host'}")
        if batch.HasField("from_peer_address"):
            self._compare_peer_address(sender, batch.from_peer_address)
        if recorded and batch.incarnation != recorded:
            self._replaced(sender, batch.incarnation)
            return PeerRefusal(grpc.StatusCode.FAILED_PRECONDITION,
                               f"member {sender}'s data was replaced (incarnation {short(batch.incarnation)}, "
                               f"expected {short(recorded)}): remove and re-add it")
        if not recorded and batch.incarnation and knows_members and not stranger:
            self.heard[sender] = batch.incarnation
        if batch.to_incarnation and batch.to_incarnation != self.incarnation:
            reason = (f"member {me}'s data was replaced (incarnation {short(self.incarnation)}, expected "
                      f"{short(batch.to_incarnation)}): remove and re-add it")
            if not self._own_problem:
                self._own_problem = (f"{reason} (kv members remove {me}; kv members add {me} ADDRESS --learner; "
                                     "then start it on an empty data directory with --join)")
                log.error("this node's data was replaced: the cluster refuses it", reason=self._own_problem)
            return PeerRefusal(grpc.StatusCode.FAILED_PRECONDITION, reason)
        if ours and not batch.cluster_id:
            self._drop_requests(batch, sender)
        if batch.to_incarnation == self.incarnation:
            self._refused_by.pop(sender, None)
        return None

    def _leader_of_a_newer_configuration(self, batch: pb.MessageBatch, sender: int) -> bool:
        """Whether a batch from a sender this node's configuration does not list is taken anyway, as the
        leader's (its other messages dropped): a member that was down while the sender was added, and
        that sender now leads, learns of the addition only from the sender's appends. Refusing them would
        leave it behind for ever, its campaigns rejected by peers that have a leader.

        Taken only with this cluster's id, and only while this node has no leader or follows that very
        sender (which the core does once it took an append of the sender's term): a stranger cannot make
        a node that follows a leader it knows change sides. Only what a leader sends its followers is
        delivered (appends, heartbeats, snapshots); a stranger's campaign or anything else is dropped."""
        ours = self.cluster_id
        if not ours or batch.cluster_id != ours:
            return False
        if self._host().node.leader_id not in (NONE, sender):
            return False
        kept = [m for m in batch.messages if m.type in LEADER_MESSAGES]
        if len(kept) != len(batch.messages):
            del batch.messages[:]
            batch.messages.extend(kept)
        now = time.monotonic()
        if now - self._stranger_logged.get(sender, -DROP_LOG_SECONDS) >= DROP_LOG_SECONDS:
            self._stranger_logged[sender] = now
            log.warning("took the leader's messages from a node which this node's configuration does not list "
                        "yet: this node is behind the configuration and learns it from that leader", peer=sender)
        return True

    def _compare_peer_address(self, sender: int, claimed: str) -> None:
        """The sender says which TCP peer port it listens on (`claimed`, "" for none). If this node's record
        sends to it at another one, this node cannot reach it there: say so, with the fix (founders given
        different --initial-peer-addresses, or a member restarted with another --peer-listen)."""
        info = self._host().members.get(sender)
        ours = info.peer_address if info is not None else ""
        if not ours or ours == claimed:
            return
        now = time.monotonic()
        key = (sender, claimed, ours)
        if now - self._peer_address_logged.get(key, -DROP_LOG_SECONDS) < DROP_LOG_SECONDS:
            return
        self._peer_address_logged[key] = now
        log.error("a member listens for peers elsewhere than this node sends to it: it cannot reach it there",
                  peer=sender, listens=claimed or "none (Raft over gRPC)", sends_to=ours,
                  fix=f"kv members update {sender} --peer-addr " + (claimed or '""'))

    def _drop_requests(self, batch: pb.MessageBatch, sender: int) -> None:
        """A batch without cluster id comes from a member that has not learned it yet (a founder that was
        down, or killed, before the identity record reached it): its answers are delivered, its requests
        (and any snapshot data) dropped. Refusing the whole stream instead would lose the answers queued
        beside its campaign requests, and two survivors, one of them such a founder, would never elect.
        It learns the id from the leader's appends, which need its answers."""
        if all(m.type in ANSWERS for m in batch.messages) and not batch.snapshot_chunk:
            return
        kept = [m for m in batch.messages if m.type in ANSWERS]
        dropped = len(batch.messages) - len(kept)
        del batch.messages[:]
        batch.messages.extend(kept)
        batch.snapshot_chunk = b""
        now = time.monotonic()
        if now - self._dropped_logged.get(sender, -DROP_LOG_SECONDS) >= DROP_LOG_SECONDS:
            self._dropped_logged[sender] = now
            log.warning("dropped requests from a member that has not learned the cluster id", peer=sender,
                        dropped=dropped, cluster_id=self.cluster_id.hex())

    def refused_by(self, peer_id: int, code: grpc.StatusCode, reason: str) -> None:
        self._refused_by[peer_id] = (reason, time.monotonic())

    def _replaced(self, sender: int, incarnation: bytes) -> None:
        key = (sender, incarnation)
        if key in self._replaced_seen:
            return
        self._replaced_seen.add(key)
        log.error("a member's data was replaced: refusing it until it is removed and re-added", member=sender,
                  incarnation=short(incarnation), expected=short(self._host().members.incarnation_of(sender)))
        host = self._host()
        host.run_in_loop(lambda: host.forget_member_progress(sender))

    # ------------------------------------------------------------------------------------------
    # Hooks the host calls from its loop
    # ------------------------------------------------------------------------------------------
    def observe_appended(self, entries: list[Entry]) -> None:
        """Newly appended entries: remember the cluster id of the newest identity record among them."""
        for e in entries:
            if e.type != EntryType.CONF_CHANGE:
                continue
            try:
                cc = ConfChange.decode(e.data)
            except ValueError:
                continue
            if cc.type != ConfChangeType.UPDATE_NODE:
                continue
            record = decode_identity_record(cc.context)
            if record is not None and record[1]:
                self._log_cluster_id = record[1]

    def members_changed(self, changes: list[ConfChange]) -> None:
        """After the registry took `changes` (or a snapshot): adopt the recorded cluster id, and forget what
        was known of removed or re-added members."""
        host = self._host()
        cid = host.members.cluster_id
        if cid and not self.cluster_id:
            self._store.adopt_cluster_id(cid)  # type: ignore[attr-defined]
            log.info("cluster id recorded", cluster_id=cid.hex())
        for cc in changes:
            if cc.type in (ConfChangeType.REMOVE_NODE, ConfChangeType.ADD_LEARNER, ConfChangeType.ADD_VOTER):
                self.heard.pop(cc.node_id, None)
                self._refused_by.pop(cc.node_id, None)
                self._replaced_seen = {k for k in self._replaced_seen if k[0] != cc.node_id}
                host.forget_member_lag(cc.node_id)

    def record_in_flight(self) -> bool:
        """An identity record of ours is proposed and not applied yet (membership changes wait for it)."""
        host = self._host()
        return bool(self._record_index) and host.is_leader and host.node.term == self._record_term \
            and host.applied < self._record_index

    def after_round(self) -> None:
        """Leader: propose an identity record if there is anything to record and none is in flight."""
        host = self._host()
        if not host.is_leader or self.record_in_flight():
            return
        now = time.monotonic()
        if now < self._retry_at:
            return
        members = host.members
        pending: dict[int, bytes] = {}
        if members.is_member(self.node_id) and not members.incarnation_of(self.node_id):
            pending[self.node_id] = self.incarnation
        for nid, inc in self.heard.items():
            if members.is_member(nid) and not members.incarnation_of(nid):
                pending[nid] = inc
        cid = b""
        if not self.cluster_id and not members.cluster_id:
            self._chosen_cluster_id = self._chosen_cluster_id or self._log_cluster_id or new_cluster_id()
            cid = self._chosen_cluster_id
        if not pending and not cid:
            return
        cc = ConfChange(ConfChangeType.UPDATE_NODE, self.node_id, identity_record(pending, cid))
        try:
            self._record_index = host.node.propose_conf_change(cc)
        except (ConfChangeRejected, ProposalDropped):
            self._retry_at = now + RETRY_SECONDS
            return
        self._record_term = host.node.term
        host.run_in_loop(lambda: None)  # wake the loop: the proposal is a Ready to handle
        log.info("recording member identity", index=self._record_index,
                 incarnations={str(n): short(i) for n, i in sorted(pending.items())},
                 cluster_id=cid.hex() if cid else None)
