"""The member registry's identity rules, applied as every node applies them: in log order, the same way."""

from __future__ import annotations

from raftkv.core import ConfChange, ConfChangeType, ConfState
from raftkv.server.members import MemberInfo, MemberRegistry, identity_record


class _Store:
    def __init__(self) -> None:
        self.saved: dict[int, bytes] = {}

    def load_members(self) -> dict[int, bytes]:
        return self.saved


def _registry() -> MemberRegistry:
    r = MemberRegistry(_Store())
    r.load({1: "h1:1", 2: "h2:1", 3: "h3:1"})
    return r


def _apply(r: MemberRegistry, *changes: ConfChange) -> None:
    r.apply(list(changes), ConfState())


def _record(incs: dict[int, bytes], cid: bytes = b"") -> ConfChange:
    return ConfChange(ConfChangeType.UPDATE_NODE, 1, identity_record(incs, cid))


def test_the_first_record_of_an_incarnation_wins_and_updates_keep_it() -> None:
    r = _registry()
    _apply(r, _record({1: b"a", 2: b"b"}, b"cluster-1"), _record({2: b"other", 3: b"c"}, b"cluster-2"))
    assert [r.incarnation_of(n) for n in (1, 2, 3)] == [b"a", b"b", b"c"]
    assert r.cluster_id == b"cluster-1"
    # An operator's update (address, marks) carries no incarnation and keeps the recorded one.
    _apply(r, ConfChange(ConfChangeType.UPDATE_NODE, 2, MemberInfo("h2:2", sync=True).encode()))
    assert r.get(2) == MemberInfo("h2:2", sync=True, incarnation=b"b")


def test_a_removed_and_re_added_member_starts_unrecorded() -> None:
    r = _registry()
    _apply(r, _record({2: b"old"}))
    _apply(r, ConfChange(ConfChangeType.REMOVE_NODE, 2))
    _apply(r, _record({2: b"ignored: not a member"}))
    assert not r.is_member(2)
    _apply(r, ConfChange(ConfChangeType.ADD_LEARNER, 2, MemberInfo("h2:1", incarnation=b"smuggled").encode()))
    assert r.is_member(2) and r.incarnation_of(2) == b""
    _apply(r, _record({2: b"new"}))
    assert r.incarnation_of(2) == b"new"


def test_identity_survives_the_persisted_form_and_snapshots() -> None:
    r = _registry()
    _apply(r, _record({1: b"a"}, b"cluster-1"))
    saved = r.encode()
    assert 0 in saved  # the cluster id, under a member id nobody has
    store = _Store()
    store.saved = saved
    again = MemberRegistry(store)
    again.load({})
    assert again.cluster_id == b"cluster-1" and again.incarnation_of(1) == b"a" and 0 not in again.all()
    other = _registry()
    other.replace_from_snapshot(saved)
    assert other.cluster_id == b"cluster-1" and other.incarnation_of(1) == b"a"
    assert r.encode_after([_record({2: b"b"})]) is not None
