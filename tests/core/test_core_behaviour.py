"""Core behaviours that need finer control than a text scenario: the paper's Figure 8, snapshots,
membership-change pitfalls, staleness proofs, and how reads share quorum rounds."""

from __future__ import annotations

import random

import pytest

from raftkv.core import (
    ConfChange,
    ConfChangeRejected,
    ConfChangeType,
    Config,
    Entry,
    EntryType,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    ProposalDropped,
    RaftNode,
    StateRole,
)
from raftkv.core.raft import Raft

from ..planted_bugs import CountingCommitRaft
from .harness import Net


def elect(net: Net, nid: int) -> None:
    net.node(nid).campaign()
    net.stabilize()
    assert net.node(nid).role == StateRole.LEADER


def test_single_node_commits_alone() -> None:
    net = Net([1])
    elect(net, 1)
    net.node(1).propose(b"solo")
    net.stabilize()
    assert [e.data for e in net.nodes[1].applied if e.type == EntryType.NORMAL and e.data] == [b"solo"]


def test_majority_side_elects_new_leader_after_check_quorum() -> None:
    net = Net([1, 2, 3])
    elect(net, 1)
    net.isolate(1)
    for _ in range(60):
        net.tick_all(1)
    assert net.node(1).role != StateRole.LEADER
    new = net.leader()
    assert new in (2, 3)
    net.heal()
    net.tick_all(5)
    assert all(net.node(n).leader_id == new for n in (1, 2, 3))


def test_figure8_leader_does_not_commit_old_term_entry_by_counting() -> None:
    """Raft paper, Figure 8. S1 (term 2) put an entry on S2 only; S5 (term 3) wrote a different entry at
    that index on itself; S1, leader again in term 4, copies its term-2 entry to S3, so a majority holds
    it. Counting replicas must not commit it: S5 can still win term 5 and overwrite it."""
    # One entry per APP, so the term-2 entry reaches S3 without the term-4 entry behind it.
    net = Net([1, 2, 3, 4, 5], max_size_per_msg=1, check_quorum=False, pre_vote=False)
    boot = net.node(1).raft_log.last_index()  # 5 bootstrap entries, term 1
    elect(net, 1)  # term 2, empty entry at boot+1 everywhere
    idx = boot + 2
    net.partition([1, 2], [3, 4, 5])
    net.node(1).propose(b"from-term-2")
    net.stabilize()
    assert net.log_terms(2)[-1] == (idx, 2)
    # S5 wins term 3 with S3, S4 and appends its own entry at the same index (nobody else gets it).
    net.partition([1, 2], [3, 4], [5])
    net.cut -= {(5, 3), (5, 4), (3, 5), (4, 5)}
    net.node(5).campaign()
    net.deliver(5, 3)
    net.deliver(5, 4)
    net.deliver(3, 5)
    net.deliver(4, 5)
    assert net.node(5).role == StateRole.LEADER and net.node(5).term == 3
    net.queue.clear()
    net.node(5).propose(b"from-term-3")
    net.process_all()
    net.queue.clear()
    # S1 restarts and is elected in term 4 by S1, S2, S3 (term 3 is lost: S3 already voted for S5).
    net.heal()
    net.partition([1, 2, 3], [4], [5])
    net.crash(1)
    s1 = net.node(1)
    for _ in range(3):
        s1.campaign()
        for a, b in ((1, 2), (1, 3), (2, 1), (3, 1)):
            net.deliver(a, b)
        if s1.role == StateRole.LEADER:
            break
    assert s1.role == StateRole.LEADER and s1.term == 4
    # S3 receives only what leads up to the term-2 entry, never S1's term-4 entry after it.
    def strip_term4(m: Message) -> bool:
        m.entries = [e for e in m.entries if e.index <= idx]
        return True

    for _ in range(10):
        net.tick(1, 1)
        net.deliver(1, 3, keep=strip_term4)
        net.deliver(3, 1)
        net.queue = [m for m in net.queue if not (m.frm == 1 and m.to == 2)]
    assert (idx, 2) in net.log_terms(3)
    assert s1.raft.prs[3].match >= idx
    assert s1.raft_log.committed < idx, "an old-term entry was committed by counting replicas"
    # The danger is real: S5 can still be elected and overwrite that index.
    net.heal()
    net.partition([1], [2, 3, 4, 5])
    net.queue.clear()
    net.crash(5)
    for _ in range(3):
        net.node(5).campaign()
        net.stabilize()
        if net.node(5).role == StateRole.LEADER:
            break
    assert net.node(5).role == StateRole.LEADER
    assert (idx, 3) in net.log_terms(3)


def test_figure8_rule_is_what_stops_the_commit() -> None:
    """The same replication state, with the commit rule broken, does commit the old-term entry: the
    check above is not passing by accident."""
    storage = MemoryStorage()
    voters = [ConfChange(ConfChangeType.ADD_VOTER, n).encode() for n in (1, 2, 3)]
    storage.append([Entry(1, i + 1, EntryType.CONF_CHANGE, d) for i, d in enumerate(voters)] + [Entry(2, 4)])
    storage.set_hard_state(HardState(term=3, vote=1, commit=3))
    for cls, expect_commit in ((Raft, 3), (CountingCommitRaft, 4)):
        r = cls(Config(id=1, rng=random.Random(1)), storage)
        r.become_candidate()
        r.become_leader()  # term 4; its empty entry (index 5) is not persisted yet
        r.prs[2].maybe_update(4)  # a follower holds the term-2 entry: with us, a majority
        r.prs[1].maybe_update(4)
        r.maybe_commit()
        assert r.log.committed == expect_commit, cls.__name__


def test_snapshot_catches_up_follower_behind_compacted_log() -> None:
    net = Net([1, 2, 3])
    elect(net, 1)
    net.isolate(3)
    for i in range(20):
        net.node(1).propose(f"v{i}".encode())
    net.stabilize()
    leader_log = net.node(1).raft_log
    applied = leader_log.applied
    st = net.nodes[1].storage
    st.create_snapshot(applied, net.node(1).conf_as_of(applied), b"state@%d" % applied)
    st.compact(applied)
    assert leader_log.first_index() == applied + 1
    net.heal()
    net.tick_all(3)
    n3 = net.node(3)
    assert n3.raft_log.committed == leader_log.committed
    assert net.nodes[3].storage.snapshot().meta.index == applied
    assert net.nodes[3].storage.snapshot().data == b"state@%d" % applied
    assert sorted(n3.conf.voters) == [1, 2, 3]
    net.node(1).propose(b"after-snapshot")
    net.stabilize()
    assert net.nodes[3].applied[-1].data == b"after-snapshot"


def test_conf_change_refused_until_leader_commits_in_its_term() -> None:
    """The single-server change pitfall (Ongaro, raft-dev 2015): a new leader must commit an entry of its
    own term before changing membership, or two leaders can arise in adjacent configurations."""
    net = Net([1, 2, 3])
    net.node(1).campaign()
    net.deliver(1, 2)
    net.deliver(2, 1)  # pre-vote granted
    net.deliver(1, 2)
    net.deliver(2, 1)  # vote granted
    n1 = net.node(1)
    assert n1.role == StateRole.LEADER
    with pytest.raises(ConfChangeRejected, match="not yet committed"):
        n1.propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 3))
    net.stabilize()
    n1.propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 3))
    with pytest.raises(ConfChangeRejected, match="in progress"):
        n1.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    net.stabilize()
    n1.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))


def test_invalid_conf_changes_are_refused() -> None:
    net = Net([1, 2, 3])
    elect(net, 1)
    n1 = net.node(1)
    with pytest.raises(ConfChangeRejected, match="already a voter"):
        n1.propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, 2))
    with pytest.raises(ConfChangeRejected, match="not a learner"):
        n1.propose_conf_change(ConfChange(ConfChangeType.PROMOTE_LEARNER, 2))
    with pytest.raises(ProposalDropped):
        net.node(2).propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 9))


def test_truncated_conf_change_takes_its_configuration_with_it() -> None:
    """A node uses the newest configuration in its log, committed or not; when that entry is overwritten
    by a new leader, the node falls back to the configuration before it."""
    net = Net([1, 2, 3], check_quorum=False)
    elect(net, 1)
    net.isolate(1)
    net.node(1).propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 3))
    net.process_all()
    assert sorted(net.node(1).conf.voters) == [1, 2]
    net.queue.clear()
    net.node(2).campaign()
    net.stabilize()
    assert net.node(2).role == StateRole.LEADER
    net.node(2).propose(b"overwrite")
    net.stabilize()
    net.heal()
    net.tick(2, 1)
    net.stabilize()
    assert sorted(net.node(1).conf.voters) == [1, 2, 3]
    assert net.node(1).raft_log.committed == net.node(2).raft_log.committed


def test_learner_promoted_then_counts() -> None:
    net = Net([1, 2], [3])
    elect(net, 1)
    net.isolate(2)
    net.node(1).propose(b"x")
    net.stabilize()
    assert net.node(1).raft_log.committed < net.node(1).raft_log.last_index()
    net.heal()
    net.stabilize()
    net.tick_all(2)
    net.node(1).propose_conf_change(ConfChange(ConfChangeType.PROMOTE_LEARNER, 3))
    net.stabilize()
    net.isolate(2)
    net.node(1).propose(b"y")
    net.stabilize()
    # Now voters are {1,2,3}: 1 and 3 are a majority without 2.
    assert net.nodes[1].applied[-1].data == b"y"


def test_concurrent_reads_share_one_quorum_round() -> None:
    net = Net([1, 2, 3])
    elect(net, 1)
    net.tick_all(1)
    before = sum(1 for m in net.sent_log if m.type == MessageType.HEARTBEAT)
    n1 = net.node(1)
    for i in range(50):
        n1.read_index(b"r%d" % i)
    net.stabilize()
    heartbeats = sum(1 for m in net.sent_log if m.type == MessageType.HEARTBEAT) - before
    assert len(net.nodes[1].read_states) == 50
    assert heartbeats == 2  # one round, to each of two followers
    # A read arriving after that round's heartbeats left starts a new round.
    n1.read_index(b"late")
    net.stabilize()
    assert sum(1 for m in net.sent_log if m.type == MessageType.HEARTBEAT) - before == 4


def test_read_index_waits_for_first_commit_in_term() -> None:
    net = Net([1, 2, 3])
    net.node(1).campaign()
    for a, b in ((1, 2), (2, 1), (1, 2), (2, 1)):
        net.deliver(a, b)
    n1 = net.node(1)
    assert n1.role == StateRole.LEADER
    n1.read_index(b"early")
    net.process_all()
    assert net.nodes[1].read_states == []
    net.stabilize()
    net.tick_all(1)
    assert [rs.context for rs in net.nodes[1].read_states] == [b"early"]
    assert net.nodes[1].read_states[0].index >= n1.raft_log.first_index()


def test_restart_keeps_log_and_term() -> None:
    net = Net([1, 2, 3])
    elect(net, 1)
    for i in range(5):
        net.node(1).propose(b"k%d" % i)
    net.stabilize()
    term = net.node(1).term
    net.crash(1)
    n1 = net.node(1)
    assert n1.term == term and n1.role == StateRole.FOLLOWER
    assert n1.raft_log.committed == net.node(2).raft_log.committed
    net.tick_all(30)
    assert net.leader() is not None
    net.node(net.leader()).propose(b"after")
    net.stabilize()
    assert net.nodes[1].applied[-1].data == b"after"


def test_ready_contract_is_enforced() -> None:
    node = RaftNode(Config(id=1, rng=random.Random(0)), MemoryStorage())
    node.step(Message(MessageType.HEARTBEAT, frm=2, to=1, term=1))
    rd = node.ready()
    with pytest.raises(RuntimeError):
        node.ready()
    with pytest.raises(RuntimeError):
        node.advance(type(rd)())
    node.advance(rd)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        Config(id=0).validate()
    with pytest.raises(ValueError):
        Config(id=1, election_tick=1, heartbeat_tick=1).validate()


def test_readded_node_installs_snapshot_taken_while_it_was_out() -> None:
    """Found by the simulator (seed 27): a node removed and added back was sent a snapshot whose
    membership did not include it, refused it, and the leader resent it forever."""
    net = Net([1, 2, 3])
    elect(net, 1)
    n1 = net.node(1)
    n1.propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 3))
    net.stabilize()
    net.isolate(3)
    for i in range(5):
        n1.propose(b"w%d" % i)
    net.stabilize()
    applied = n1.raft_log.applied
    assert 3 not in n1.conf_as_of(applied).members()
    st = net.nodes[1].storage
    st.create_snapshot(applied, n1.conf_as_of(applied), b"state")
    st.compact(applied)
    net.heal()
    n1.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 3))
    net.stabilize()
    net.tick_all(3)
    assert net.nodes[3].storage.snapshot().meta.index == applied
    assert 3 in net.node(3).conf.learners
    assert net.node(3).raft_log.committed == n1.raft_log.committed


def test_removed_notice_for_another_node_is_ignored() -> None:
    """A new member may take over the address of a removed one; a REMOVED notice still on its way to the
    old id must not end the new member."""
    net = Net([1, 2, 3])
    elect(net, 1)
    n2 = net.node(2)
    n2.step(Message(MessageType.REMOVED, frm=1, to=7, term=n2.term, index=99))
    assert n2.removed_at() == 0
    n2.step(Message(MessageType.REMOVED, frm=1, to=2, term=n2.term, index=99))
    assert n2.removed_at() == 99


def test_rounds_are_reported_sent_once_and_confirmed_in_order() -> None:
    """The host times leases from the rounds the core reports: each round is reported sent exactly once
    (in the Ready that carries its heartbeats), and the confirmed round only moves forward."""
    net = Net([1, 2, 3])
    elect(net, 1)
    net.tick_all(3)
    assert net.nodes[1].rounds_sent == [(2, 1), (2, 2), (2, 3)]
    assert all(not sn.rounds_sent for nid, sn in net.nodes.items() if nid != 1)
    n1 = net.node(1)
    assert n1.confirmed_round() is not None and n1.confirmed_round().number == 3
    # A late answer to round 1 (a duplicate, or one that sat in a buffer) confirms nothing new.
    n1.step(Message(MessageType.HEARTBEAT_RESP, frm=2, to=1, term=n1.term, context=(1).to_bytes(8, "big")))
    n1.step(Message(MessageType.HEARTBEAT_RESP, frm=3, to=1, term=n1.term, context=(1).to_bytes(8, "big")))
    assert n1.confirmed_round().number == 3
    # Round 4 answered by one follower only (the other cut off): not confirmed... until a quorum has it.
    net.cut.add((1, 3))
    net.tick_all(1)
    assert n1.confirmed_round().number == 4  # leader + node 2 are a quorum of 3
    net.cut.add((1, 2))
    net.tick_all(1)
    assert net.nodes[1].rounds_sent[-1] == (2, 5) and n1.confirmed_round().number == 4


def test_a_round_sent_before_the_first_commit_of_the_term_proves_nothing() -> None:
    net = Net([1, 2, 3])
    net.node(1).campaign()
    for a, b in ((1, 2), (2, 1), (1, 2), (2, 1)):
        net.deliver(a, b)
    n1 = net.node(1)
    assert n1.role == StateRole.LEADER and not n1.lease_held()
    net.tick(1, 1)  # a round of heartbeats leaves before the no-op of the term is committed
    net.stabilize()
    assert n1.raft.rounds.confirmed == 1 and n1.lease_held()
    assert n1.confirmed_round() is None
    net.tick_all(1)
    cr = n1.confirmed_round()
    assert cr is not None and (cr.number, cr.commit) == (2, n1.raft_log.committed)


def test_a_single_voter_reports_its_rounds_although_it_sends_no_heartbeats() -> None:
    net = Net([1])
    elect(net, 1)
    for _ in range(2):
        net.tick(1, 1)
        net.process_all()
    # Two rounds opened before one Ready: only the newest is reported (the older are no later).
    net.tick(1, 2)
    net.process_all()
    assert net.nodes[1].rounds_sent == [(2, 1), (2, 2), (2, 4)]
    assert net.node(1).confirmed_round().number == 4


class EagerSelfCountRaft(Raft):
    """Counts the leader's own entries the moment they are appended, before its host made them durable."""

    def append_entries(self, datas: list[bytes], types: list[EntryType] | None = None) -> tuple[int, int]:
        first, last = super().append_entries(datas, types)
        me = self.prs.get(self.id)  # absent while a leader replicates its own removal
        if self.role == StateRole.LEADER and me is not None:
            me.maybe_update(last)
        return first, last


@pytest.mark.parametrize(("raft_class", "commit_on_one_ack"), [(Raft, 4), (EagerSelfCountRaft, 5)])
def test_leader_counts_its_own_append_only_once_durable(raft_class: type[Raft], commit_on_one_ack: int) -> None:
    """The leader's appends leave while its own fsync runs (thesis §10.2.1); a follower's acknowledgement
    arriving meanwhile makes 1 durable copy of 3, not a quorum: commit waits for the leader's own persist.
    The eager variant (the rule broken) commits on that lone acknowledgement: the check is not vacuous."""
    net = Net([1, 2, 3], raft_class=raft_class)
    elect(net, 1)
    assert net.node(1).raft_log.committed == 4
    net.nodes[1].hold_next = True
    index = net.node(1).propose(b"w")
    net.process_all()
    held = net.nodes[1].held
    assert held is not None and [e.index for e in held.entries] == [index] == [5]
    assert {m.to for m in held.messages if m.type == MessageType.APP} == {2, 3}  # sent before persisting
    net.deliver(1, 2)
    net.deliver(2, 1)
    assert net.node(1).status().progress[2].match == 5
    assert net.node(1).raft_log.committed == commit_on_one_ack
    net.persist(1)
    assert net.node(1).raft_log.committed == 5
    net.stabilize()
    assert [e.data for e in net.nodes[3].applied][-1:] == [b"w"]


def test_an_unpersisted_leader_entry_lost_in_a_crash_was_never_committed() -> None:
    """The leader crashes before its fsync ends, with one follower holding the entry: nothing counted it
    as committed, and a new leader's term may replace or keep it; no node has applied it either way."""
    net = Net([1, 2, 3])
    elect(net, 1)
    net.nodes[1].hold_next = True
    net.node(1).propose(b"w")
    net.process_all()
    net.deliver(1, 2)
    net.deliver(2, 1)
    net.crash(1)  # the held Ready is lost with the leader's memory
    assert net.nodes[1].storage.last_index() == 4
    assert all(e.data != b"w" for sn in net.nodes.values() for e in sn.applied)
    assert net.node(2).raft_log.committed == 4


def test_voter_demoted_to_learner_stops_counting_but_keeps_replicating() -> None:
    """DEMOTE_VOTER (a hot spare's replacement of a dead voter): the demoted node leaves the quorum (the
    remaining voters commit without it) yet still receives the log as a learner."""
    net = Net([1, 2, 3, 4])
    elect(net, 1)
    n1 = net.node(1)
    with pytest.raises(ConfChangeRejected, match="not a voter"):
        n1.propose_conf_change(ConfChange(ConfChangeType.DEMOTE_VOTER, 9))
    n1.propose_conf_change(ConfChange(ConfChangeType.DEMOTE_VOTER, 4))
    net.stabilize()
    assert sorted(n1.conf.voters) == [1, 2, 3] and sorted(n1.conf.learners) == [4]
    assert sorted(net.node(4).conf.learners) == [4]
    net.isolate(3)
    n1.propose(b"z")
    net.stabilize()
    # Voters {1,2,3}: 1 and 2 commit; 4 only replicates, and as a learner it never campaigns.
    assert net.nodes[1].applied[-1].data == b"z"
    assert net.nodes[4].applied[-1].data == b"z"
    assert 4 not in net.node(4).conf.voters


def _commits(net: Net) -> dict[int, int]:
    return {nid: net.node(nid).raft_log.committed for nid in net.nodes}


def test_a_leader_tells_followers_of_a_commit_at_once_by_default() -> None:
    net = Net([1, 2, 3])
    elect(net, 1)
    net.node(1).propose(b"x")
    net.stabilize()
    assert set(_commits(net).values()) == {net.node(1).raft_log.committed}
    assert net.node(1).commit_notice_pending() == 0


def test_a_deferred_commit_notice_rides_on_the_next_append_or_leaves_when_the_host_sends_it() -> None:
    """With `defer_commit_notice` a commit sends nothing by itself: the next append carries the commit
    index, and `send_commit_notice` tells the followers when no append came."""
    net = Net([1, 2, 3], defer_commit_notice=True)
    elect(net, 1)
    leader = net.node(1)
    first = leader.commit_notice_pending()
    assert first, "the term's first entry committed: a notice is owed"
    told = leader.raft_log.committed
    assert min(_commits(net)[2], _commits(net)[3]) < told, "a follower that acked first was told nothing"

    net.sent_log.clear()
    leader.propose(b"x")
    net.stabilize()
    assert _commits(net)[2] >= told and _commits(net)[3] >= told, "the append carried the commit index"
    second = leader.commit_notice_pending()
    assert second and second != first, "the new entry's commit is owed as a new notice"
    assert leader.raft_log.committed == told + 1
    assert [m.type for m in net.sent_log if m.frm == 1] == [MessageType.APP, MessageType.APP]

    net.sent_log.clear()
    leader.send_commit_notice()
    net.stabilize()
    assert set(_commits(net).values()) == {told + 1}
    assert leader.commit_notice_pending() == 0
    notices = [m for m in net.sent_log if m.frm == 1]
    assert [(m.type, m.entries, m.commit) for m in notices] == [(MessageType.APP, [], told + 1)] * 2

    net.sent_log.clear()
    leader.send_commit_notice()  # nothing owed: nothing sent
    net.stabilize()
    assert net.sent_log == []


def test_a_deferred_commit_notice_is_forgotten_by_a_leader_that_steps_down() -> None:
    net = Net([1, 2, 3], defer_commit_notice=True)
    elect(net, 1)
    assert net.node(1).commit_notice_pending()
    net.node(1).transfer_leader(2)
    net.stabilize()
    assert net.node(1).role == StateRole.FOLLOWER and net.node(2).role == StateRole.LEADER
    assert net.node(1).commit_notice_pending() == 0
    net.sent_log.clear()
    net.node(1).send_commit_notice()
    net.stabilize()
    assert [m for m in net.sent_log if m.frm == 1] == []
