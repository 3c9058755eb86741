"""Who the members are beyond their ids: address and replication marks (sync / semi_sync).

This travels through the log in each conf change's context, so every node (including one that joins
later or restores a snapshot) learns it the same way, and it is persisted by the store with the applied
state. The core only knows ids; everything an operator sees about a member comes from here.
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

    def encode(self) -> bytes:
        return msgpack.packb({"address": self.address, "sync": self.sync, "semi_sync": self.semi_sync,
                              "name": self.name})

    @staticmethod
    def decode(data: bytes) -> MemberInfo:
        if not data:
            return MemberInfo()
        d = msgpack.unpackb(data)
        return MemberInfo(str(d.get("address", "")), bool(d.get("sync", False)), bool(d.get("semi_sync", False)),
                          str(d.get("name", "")))


class MemberRegistry:
    def __init__(self, store: object) -> None:
        self._store = store
        self._members: dict[int, MemberInfo] = {}

    def load(self, configured_peers: dict[int, str]) -> None:
        """Persisted members win; configured peers fill in addresses the log has not told us yet."""
        saved = self._store.load_members()  # type: ignore[attr-defined]
        self._members = {nid: MemberInfo.decode(raw) for nid, raw in saved.items()}
        for nid, addr in configured_peers.items():
            info = self._members.get(nid)
            if info is None:
                self._members[nid] = MemberInfo(addr)
            elif not info.address:
                self._members[nid] = replace(info, address=addr)

    def get(self, nid: int) -> MemberInfo | None:
        return self._members.get(nid)

    def all(self) -> dict[int, MemberInfo]:
        return dict(self._members)

    def encode(self) -> dict[int, bytes]:
        return {nid: info.encode() for nid, info in self._members.items()}

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

    def _after(self, changes: list[ConfChange]) -> dict[int, MemberInfo]:
        members = dict(self._members)
        for cc in changes:
            if cc.type == ConfChangeType.REMOVE_NODE:
                members.pop(cc.node_id, None)
            elif cc.context:
                try:
                    members[cc.node_id] = MemberInfo.decode(cc.context)
                except (ValueError, msgpack.UnpackException):
                    members.setdefault(cc.node_id, MemberInfo())
            else:
                members.setdefault(cc.node_id, MemberInfo())
        return members

    def encode_after(self, changes: list[ConfChange]) -> dict[int, bytes] | None:
        """What the store must persist with this apply batch (None: no change)."""
        if not changes:
            return None
        return {nid: info.encode() for nid, info in self._after(changes).items()}

    def apply(self, changes: list[ConfChange], conf: ConfState) -> None:
        self._members = self._after(changes)

    def replace_from_snapshot(self, saved: dict[int, bytes]) -> None:
        if saved:
            self._members = {nid: MemberInfo.decode(raw) for nid, raw in saved.items()}

    def sync_set(self, conf: ConfState) -> frozenset[int]:
        """Who a `sync` write waits for: every voter, plus learners marked sync."""
        return frozenset(conf.voters) | frozenset(n for n in conf.learners if self._mark(n, "sync"))

    def semi_sync_set(self, conf: ConfState, leader: int) -> frozenset[int]:
        """Who counts for a `semi_sync` write: members marked semi_sync, or, if none is, every other voter."""
        marked = frozenset(n for n in conf.members() if n != leader and self._mark(n, "semi_sync"))
        return marked or frozenset(n for n in conf.voters if n != leader)

    def _mark(self, nid: int, mark: str) -> bool:
        info = self._members.get(nid)
        return bool(info and getattr(info, mark))
