"""Who the members are beyond their ids: address, replication marks (sync / semi_sync) and incarnation.

This travels through the log in each conf change's context, so every node (including one that joins
later or restores a snapshot) learns it the same way, and it is persisted by the store with the applied
state. The core only knows ids; everything an operator sees about a member comes from here.

Identity also travels here, in *identity records*: UPDATE_NODE changes that the leader proposes itself,
whose context names incarnations (and, once, the cluster id) to record. A member's incarnation is recorded
the first time the leader hears one for it, and stays until the member is removed: an update of its
address or marks keeps it. The cluster id, chosen by the first leader of a cluster founded without a
token, is kept under member id 0 of the persisted registry, so it travels in snapshots too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import msgpack

from ..core import ConfChange, ConfChangeType, ConfState, Entry, EntryType


@dataclass(slots=True, frozen=True)
class MemberInfo:
    address: str = ""
    sync: bool = False
    semi_sync: bool = False
    name: str = ""
    incarnation: bytes = b""
    """The random id of the member's data directory, as the cluster recorded it (b"": not yet)."""
    spare: bool = False
    """A hot spare (learners only): the leader may promote it in place of a dead voter (spares.py)."""
    replaces: int = 0
    """Set on a spare's promotion: the dead voter it replaces, still to be demoted (0: none). Recorded in
    the log so that a new leader finishes a replacement the old one began."""
    peer_address: str = ""
    """The member's TCP peer port (`--peer-listen`): peers send it Raft batches there, over TCP frames,
    instead of over gRPC to `address` ("": none, gRPC). Absent from contexts written before it existed."""

    def encode(self) -> bytes:
        d: dict[str, object] = {"address": self.address, "sync": self.sync, "semi_sync": self.semi_sync,
                                "name": self.name}
        if self.incarnation:
            d["incarnation"] = self.incarnation
        if self.spare:
            d["spare"] = True
        if self.replaces:
            d["replaces"] = self.replaces
        if self.peer_address:
            d["peer_address"] = self.peer_address
        return msgpack.packb(d, use_bin_type=True)

    @staticmethod
    def decode(data: bytes) -> MemberInfo:
        if not data:
            return MemberInfo()
        d = msgpack.unpackb(data)
        return MemberInfo(str(d.get("address", "")), bool(d.get("sync", False)), bool(d.get("semi_sync", False)),
                          str(d.get("name", "")), bytes(d.get("incarnation", b"")), bool(d.get("spare", False)),
                          int(d.get("replaces", 0)), str(d.get("peer_address", "")))


CLUSTER_KEY = 0
"""Member id under which the persisted registry keeps the cluster-wide identity (no member has id 0)."""
_RECORD = "identity_record"


def identity_record(incarnations: dict[int, bytes], cluster_id: bytes = b"") -> bytes:
    """The context of an UPDATE_NODE change that records incarnations (and maybe the cluster id)."""
    return msgpack.packb({_RECORD: True, "incarnations": incarnations, "cluster_id": cluster_id},
                         use_bin_type=True)


def decode_identity_record(context: bytes) -> tuple[dict[int, bytes], bytes] | None:
    """(incarnations, cluster_id) if `context` is an identity record, else None."""
    if not context:
        return None
    try:
        d = msgpack.unpackb(context, strict_map_key=False)
    except (ValueError, msgpack.UnpackException):
        return None
    if not isinstance(d, dict) or not d.get(_RECORD):
        return None
    incs = {int(k): bytes(v) for k, v in dict(d.get("incarnations") or {}).items()}
    return incs, bytes(d.get("cluster_id") or b"")


class MemberRegistry:
    def __init__(self, store: object) -> None:
        self._store = store
        self._members: dict[int, MemberInfo] = {}
        self.cluster_id = b""
        """The cluster id recorded through the log (b"": none recorded; see storage/identity.py)."""

    def _take(self, saved: dict[int, bytes]) -> None:
        saved = dict(saved)
        cluster = saved.pop(CLUSTER_KEY, None)
        if cluster is not None:
            self.cluster_id = bytes(msgpack.unpackb(cluster).get("cluster_id", b""))
        self._members = {nid: MemberInfo.decode(raw) for nid, raw in saved.items()}

    def load(self, configured_peers: dict[int, str], configured_peer_ports: dict[int, str] | None = None) -> None:
        """Persisted members win; configured peers fill in addresses (and peer ports) the log has not told
        us yet."""
        self._take(self._store.load_members())  # type: ignore[attr-defined]
        ports = configured_peer_ports or {}
        for nid, addr in configured_peers.items():
            info = self._members.get(nid)
            if info is None:
                self._members[nid] = MemberInfo(addr, peer_address=ports.get(nid, ""))
            elif not info.address:
                self._members[nid] = replace(info, address=addr)
            info = self._members[nid]
            if not info.peer_address and ports.get(nid):
                self._members[nid] = replace(info, peer_address=ports[nid])

    def get(self, nid: int) -> MemberInfo | None:
        return self._members.get(nid)

    def all(self) -> dict[int, MemberInfo]:
        return dict(self._members)

    def encode(self) -> dict[int, bytes]:
        return self._encode(self._members, self.cluster_id)

    @staticmethod
    def _encode(members: dict[int, MemberInfo], cluster_id: bytes) -> dict[int, bytes]:
        out = {nid: info.encode() for nid, info in members.items()}
        if cluster_id:
            out[CLUSTER_KEY] = msgpack.packb({"cluster_id": cluster_id}, use_bin_type=True)
        return out

    def incarnation_of(self, nid: int) -> bytes:
        info = self._members.get(nid)
        return info.incarnation if info else b""

    def is_member(self, nid: int) -> bool:
        return nid in self._members

    @staticmethod
    def changes_in(entries: list[Entry]) -> list[ConfChange]:
        out = []
        for e in entries:
            if e.type == EntryType.CONF_CHANGE:
                try:
                    out.append(ConfChange.decode(e.data))
                except ValueError:
                    continue
        return out

    def _after(self, changes: list[ConfChange]) -> tuple[dict[int, MemberInfo], bytes]:
        """The registry after `changes`, applied in log order, and the cluster id after them.

        Deterministic on every node: an identity record sets only what is not recorded yet (so of two
        leaders' records the first in the log wins), and a change that re-states a member keeps its
        recorded incarnation unless it is an add (a re-added member starts unrecorded)."""
        members = dict(self._members)
        cluster_id = self.cluster_id
        for cc in changes:
            old = members.get(cc.node_id)
            if cc.type in (ConfChangeType.REMOVE_NODE, ConfChangeType.DEMOTE_VOTER):
                # Whoever was promoted to replace this voter has done so: its replacement is complete.
                for nid, info in list(members.items()):
                    if info.replaces == cc.node_id:
                        members[nid] = replace(info, replaces=0)
            if cc.type == ConfChangeType.REMOVE_NODE:
                members.pop(cc.node_id, None)
                continue
            record = decode_identity_record(cc.context) if cc.type == ConfChangeType.UPDATE_NODE else None
            if record is not None:
                incarnations, cid = record
                for nid, inc in incarnations.items():
                    info = members.get(nid)
                    if info is not None and not info.incarnation and inc:
                        members[nid] = replace(info, incarnation=inc)
                if cid and not cluster_id:
                    cluster_id = cid
                continue
            if cc.context:
                try:
                    info = MemberInfo.decode(cc.context)
                except (ValueError, msgpack.UnpackException):
                    info = old or MemberInfo()
            else:
                info = old or MemberInfo()
            adding = cc.type in (ConfChangeType.ADD_VOTER, ConfChangeType.ADD_LEARNER) and old is None
            if adding:
                info = replace(info, incarnation=b"")
            elif old is not None and not info.incarnation:
                info = replace(info, incarnation=old.incarnation)
            members[cc.node_id] = info
        return members, cluster_id

    def encode_after(self, changes: list[ConfChange]) -> dict[int, bytes] | None:
        """What the store must persist with this apply batch (None: no change)."""
        if not changes:
            return None
        return self._encode(*self._after(changes))

    def apply(self, changes: list[ConfChange], conf: ConfState) -> None:
        self._members, self.cluster_id = self._after(changes)

    def replace_from_snapshot(self, saved: dict[int, bytes]) -> None:
        if saved:
            self._take(saved)

    def sync_set(self, conf: ConfState) -> frozenset[int]:
        """Who a `sync` write waits for: every data voter, plus learners marked sync. Never a witness: one
        holding an entry without its payload is no replica of the write."""
        return conf.data_voters() | frozenset(n for n in conf.learners if self._mark(n, "sync"))

    def semi_sync_set(self, conf: ConfState, leader: int) -> frozenset[int]:
        """Who counts for a `semi_sync` write: members marked semi_sync, or, if none is, every other data
        voter (a witness holds no replica of a write)."""
        data = conf.members() - conf.witnesses
        marked = frozenset(n for n in data if n != leader and self._mark(n, "semi_sync"))
        return marked or frozenset(n for n in conf.data_voters() if n != leader)

    def spares(self, conf: ConfState) -> frozenset[int]:
        """Learners marked as hot spares (a voter's spare mark means nothing)."""
        return frozenset(n for n in conf.learners if self._mark(n, "spare"))

    def _mark(self, nid: int, mark: str) -> bool:
        info = self._members.get(nid)
        return bool(info and getattr(info, mark))
