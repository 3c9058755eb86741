"""The hot-spare decision (server/spares.py) and the member records it relies on, as pure functions: which
step the leader takes towards full fault tolerance, and when it takes none."""

from __future__ import annotations

import msgpack
import pytest

from raftkv.cli.server_main import build_config
from raftkv.core import ConfChange, ConfChangeType, ConfState
from raftkv.server.config import ConfigError
from raftkv.server.members import MemberInfo, MemberRegistry
from raftkv.server.reconfig_check import ClusterView, MemberHealth
from raftkv.server.spares import SPARE_MAX_BEHIND, Demote, Hold, Promote, plan

AFTER = 5.0
LAST = 1000


def _view(voters: set[int], learners: set[int], up: dict[int, int], leader: int = 1) -> ClusterView:
    """`up`: member -> entries behind, for those the leader hears from; every other member is silent."""
    health = {n: (MemberHealth(LAST - up[n], 0.01, True) if n in up else MemberHealth(LAST - 500, None, False))
              for n in voters | learners if n != leader}
    return ClusterView(leader, ConfState(frozenset(voters), frozenset(learners)), LAST, 0.2, health, {})


def _spares(*ids: int) -> dict[int, MemberInfo]:
    return {n: MemberInfo(f"h{n}:1", spare=True) for n in ids}


def test_a_dead_voter_is_replaced_by_a_caught_up_spare() -> None:
    view = _view({1, 2, 3}, {4}, {2: 0, 4: 3})
    assert plan(view, _spares(4), {2: 0.1, 3: AFTER + 1, 4: 0.1}, AFTER) == Promote(4, 3)


def test_nothing_happens_before_the_delay_or_with_the_feature_off() -> None:
    view = _view({1, 2, 3}, {4}, {2: 0, 4: 0})
    assert plan(view, _spares(4), {3: AFTER - 0.5}, AFTER) is None
    assert plan(view, _spares(4), {3: 1e9}, 0.0) is None


def test_a_spare_that_is_behind_or_silent_is_never_promoted() -> None:
    silent = {3: AFTER + 1}
    behind = plan(_view({1, 2, 3}, {4}, {2: 0, 4: SPARE_MAX_BEHIND + 1}), _spares(4), silent, AFTER)
    assert isinstance(behind, Hold) and "no spare is caught up" in behind.why and behind.dead == 3
    assert behind.kind == "spare"
    gone = plan(_view({1, 2, 3}, {4}, {2: 0}), _spares(4), silent, AFTER)
    assert isinstance(gone, Hold) and "not heard from" in gone.why
    # A plain learner is not a spare: with none, there is nothing to decide.
    assert plan(_view({1, 2, 3}, {4}, {2: 0, 4: 0}), {4: MemberInfo("h4:1")}, silent, AFTER) is None


def test_no_promotion_without_a_quorum_of_the_enlarged_configuration() -> None:
    """3 voters, 2 of them silent: 1 healthy voter + the spare = 2 < 3, the quorum of 4 voters."""
    view = _view({1, 2, 3}, {4}, {4: 0})
    st = plan(view, _spares(4), {2: AFTER + 1, 3: AFTER + 1}, AFTER)
    assert isinstance(st, Hold) and "needing 3 for a quorum" in st.why and st.kind == "quorum"
    # 5 voters, 2 dead: 3 healthy + the spare = 4, the quorum of 6.
    view5 = _view({1, 2, 3, 4, 5}, {6}, {2: 0, 3: 0, 6: 0})
    assert plan(view5, _spares(6), {4: AFTER + 1, 5: AFTER + 2}, AFTER) == Promote(6, 4)


def test_a_promotion_whose_demotion_is_pending_is_finished_first() -> None:
    """A leader elected between the two steps reads `replaces` from the log and demotes the dead voter."""
    view = _view({1, 2, 3, 4}, set(), {2: 0, 4: 0})
    members = {4: MemberInfo("h4:1", replaces=3)}
    assert plan(view, members, {3: 0.0}, AFTER) == Demote(3, 4)
    assert plan(view, members, {3: 0.0}, 0.0) == Demote(3, 4)


class _Store:
    def load_members(self) -> dict[int, bytes]:
        return {}


def test_the_spare_mark_and_replaces_travel_in_the_log_and_demotion_clears_replaces() -> None:
    r = MemberRegistry(_Store())
    r.load({1: "h1:1", 2: "h2:1", 3: "h3:1"})
    r.apply([ConfChange(ConfChangeType.ADD_LEARNER, 4, MemberInfo("h4:1", spare=True).encode())], ConfState())
    assert r.spares(ConfState(frozenset({1, 2, 3}), frozenset({4}))) == {4}
    assert r.spares(ConfState(frozenset({1, 2, 3, 4}), frozenset())) == frozenset()
    promoted = MemberInfo("h4:1", replaces=3).encode()
    r.apply([ConfChange(ConfChangeType.PROMOTE_LEARNER, 4, promoted)], ConfState())
    assert r.get(4) == MemberInfo("h4:1", replaces=3)
    r.apply([ConfChange(ConfChangeType.DEMOTE_VOTER, 3)], ConfState())
    assert r.get(4) == MemberInfo("h4:1") and r.get(3) == MemberInfo("h3:1")


def test_records_without_marks_encode_as_before() -> None:
    """Old entries decode, and a member without the new marks is written exactly as before them."""
    assert set(msgpack.unpackb(MemberInfo("a:1").encode())) == {"address", "sync", "semi_sync", "name"}
    assert MemberInfo.decode(msgpack.packb({"address": "a:1"})) == MemberInfo("a:1")


def test_a_negative_delay_is_refused_and_zero_turns_it_off() -> None:
    base = {"node_id": 1, "data_dir": "/tmp/unused-raftkv-config-test"}
    with pytest.raises(ConfigError, match="--spare-promote-after must be >= 0 seconds"):
        build_config(None, {**base, "spare_promote_after": -1.0})
    assert build_config(None, {**base, "spare_promote_after": 0.0}).spare_promote_after == 0.0
    assert build_config(None, base).spare_promote_after == 30.0


class _Host:
    """What SparePromoter uses of NodeHost: the leader's view, its silence table, its registry, and
    change_member (recorded, and applied to the view as the log would)."""

    def __init__(self, view: ClusterView, members: dict[int, MemberInfo], silent: dict[int, float]) -> None:
        from raftkv.server.metrics import Metrics

        self.view, self.silent, self.changes = view, silent, []  # type: ignore[var-annotated]
        self.members = MemberRegistry(_Store())
        self.members._members = dict(members)
        self.metrics = Metrics(1)
        self.clock = type("C", (), {"monotonic": staticmethod(lambda: 100.0)})()
        self.lag = type("L", (), {"silent_for": lambda _s, n, now: self.silent.get(n, 0.0)})()

    def reconfig_view(self) -> ClusterView:
        return self.view

    async def change_member(self, cc: ConfChange) -> tuple[int, int]:
        self.changes.append(cc)
        self.members.apply([cc], self.view.conf)
        self.view = ClusterView(self.view.leader, self.view.conf.apply(cc), self.view.last_index,
                                self.view.election_timeout_s, self.view.members, {})
        return len(self.changes), 1


def test_the_promoter_promotes_then_demotes_and_counts_once() -> None:
    import asyncio

    from raftkv.server.spares import SparePromoter

    members = {n: MemberInfo(f"h{n}:1") for n in (1, 2, 3)} | _spares(4)
    host = _Host(_view({1, 2, 3}, {4}, {2: 0, 4: 0}), members, {3: AFTER + 1})
    promoter = SparePromoter(host, AFTER)  # type: ignore[arg-type]
    assert isinstance(asyncio.run(promoter.step()), Promote)
    assert [(cc.type, cc.node_id) for cc in host.changes] == [(ConfChangeType.PROMOTE_LEARNER, 4),
                                                              (ConfChangeType.DEMOTE_VOTER, 3)]
    assert MemberInfo.decode(host.changes[0].context) == MemberInfo("h4:1", replaces=3)
    assert host.view.conf == ConfState(frozenset({1, 2, 4}), frozenset({3}))
    assert host.members.get(4) == MemberInfo("h4:1")  # the demotion cleared `replaces`
    assert host.metrics.registry.get_sample_value("raftkv_spare_promotions_total") == 1
    # The dead node is a learner now and no spare is left: nothing more to do.
    assert asyncio.run(promoter.step()) is None and len(host.changes) == 2
