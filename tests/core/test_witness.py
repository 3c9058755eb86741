"""Witness members in the core (DESIGN.md §7): a voter that keeps indices and terms but no payloads.

Each test names what would break: a witness that does not count for commit, a healthy cluster whose
witness sees values, a degraded one that cannot commit, a witness that keeps leading or takes writes.
"""

from __future__ import annotations

import pytest

from raftkv.core import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    ProposalDropped,
    StateRole,
    bootstrap_entries,
)
from raftkv.core.raft import Raft
from raftkv.core.witness import META_ONLY

from .harness import Net

W = 3


def elect(net: Net, nid: int) -> None:
    net.node(nid).campaign()
    net.stabilize()
    assert net.node(nid).role == StateRole.LEADER


def two_plus_one(**cfg: object) -> Net:
    net = Net([1, 2, W], witnesses=[W], **cfg)
    elect(net, 1)
    return net


def payloads(net: Net, nid: int) -> list[bytes]:
    """The payloads of the normal entries stored on `nid`."""
    st = net.nodes[nid].storage
    return [e.data for e in st.entries_[1:] if e.type == EntryType.NORMAL and e.data]


def sent_payloads_to(net: Net, nid: int) -> list[bytes]:
    return [e.data for m in net.sent_log if m.to == nid for e in m.entries
            if e.type == EntryType.NORMAL and e.data]


def applied_data(net: Net, nid: int) -> list[bytes]:
    return [e.data for e in net.nodes[nid].applied if e.type == EntryType.NORMAL and e.data]


def test_conf_state_witnesses_are_voters_and_bootstrap_marks_them() -> None:
    conf = ConfState(frozenset({1, 2}))
    conf = conf.apply(ConfChange(ConfChangeType.ADD_WITNESS, 3))
    assert conf.voters == {1, 2, 3} and conf.witnesses == {3} and conf.data_voters() == {1, 2}
    with pytest.raises(ValueError, match="witness"):
        conf.apply(ConfChange(ConfChangeType.DEMOTE_VOTER, 3))
    with pytest.raises(ValueError, match="data voter"):
        ConfState(frozenset({1, 3}), witnesses=frozenset({3})).apply(ConfChange(ConfChangeType.REMOVE_NODE, 1))
    assert conf.apply(ConfChange(ConfChangeType.REMOVE_NODE, 3)) == ConfState(frozenset({1, 2}))
    entries, _ = bootstrap_entries(ConfState(frozenset({1, 2, 3}), witnesses=frozenset({3})))
    kinds = [ConfChange.decode(e.data) for e in entries]
    assert [(c.type, c.node_id) for c in kinds] == [
        (ConfChangeType.ADD_VOTER, 1), (ConfChangeType.ADD_VOTER, 2), (ConfChangeType.ADD_WITNESS, 3)]
    # An old entry (no witness type) decodes as before.
    assert ConfChange.decode(ConfChange(ConfChangeType.ADD_VOTER, 7).encode()).type == ConfChangeType.ADD_VOTER


def test_healthy_cluster_never_sends_the_witness_a_payload() -> None:
    net = two_plus_one()
    for i in range(5):
        net.node(1).propose(f"value-{i}".encode())
        net.stabilize()
        net.tick_all(1)
    assert applied_data(net, 2) == [f"value-{i}".encode() for i in range(5)]
    assert sent_payloads_to(net, W) == []
    assert payloads(net, W) == []
    # The witness still holds every index and term (what elections compare).
    assert net.log_terms(W) == net.log_terms(1)
    assert applied_data(net, W) == []  # the harness records what a host is handed: only stripped entries
    assert all(e.type != EntryType.NORMAL or not e.data for e in net.nodes[W].applied)


def test_witness_vote_commits_once_the_payload_waited_when_a_data_voter_is_down() -> None:
    net = two_plus_one(witness_payload_after_ticks=2)
    net.isolate(2)
    net.node(1).propose(b"while-2-is-down")
    net.stabilize()
    # Held back from the witness: not yet committed, and the witness saw no value.
    assert net.node(1).raft_log.committed < net.node(1).raft_log.last_index()
    assert payloads(net, W) == []
    net.tick_all(3)
    assert applied_data(net, 1) == [b"while-2-is-down"]
    assert payloads(net, W) == [b"while-2-is-down"]  # the witness holds it: it counted for the commit


def test_witness_drops_payloads_once_every_data_voter_holds_them() -> None:
    net = two_plus_one(witness_payload_after_ticks=1)
    net.isolate(2)
    net.node(1).propose(b"degraded")
    net.tick_all(3)
    assert payloads(net, W) == [b"degraded"]
    net.heal()
    net.tick_all(3)
    assert applied_data(net, 2) == [b"degraded"]
    assert payloads(net, W) == []
    assert net.log_terms(W) == net.log_terms(2)


def test_zero_delay_sends_the_witness_payloads_at_once() -> None:
    """witness_payload_after_ticks=0: the witness gets payloads at once (a degraded cluster commits in the
    same round trip); the floor still strips them afterwards."""
    net = two_plus_one(witness_payload_after_ticks=0)
    net.isolate(2)
    net.node(1).propose(b"now")
    net.stabilize()
    assert applied_data(net, 1) == [b"now"]


def test_witness_caretaker_hands_leadership_to_the_data_voter_it_brings_up_to_date() -> None:
    net = two_plus_one(witness_payload_after_ticks=1)
    net.isolate(2)  # 2 paused
    for i in range(3):
        net.node(1).propose(f"acked-{i}".encode())
    net.tick_all(3)
    assert applied_data(net, 1) == [b"acked-0", b"acked-1", b"acked-2"]
    # 1 dies for good; 2 comes back. Only the witness holds the acknowledged writes besides 1.
    net.heal()
    net.isolate(1)
    for _ in range(200):
        net.tick_all(1)
        if net.node(2).role == StateRole.LEADER:
            break
    # 2 lacked the acknowledged entries: only the witness could win, and it handed over.
    assert any(m.type == MessageType.TIMEOUT_NOW and m.frm == W and m.to == 2 for m in net.sent_log)
    assert net.node(2).role == StateRole.LEADER
    assert net.node(W).role == StateRole.FOLLOWER
    assert applied_data(net, 2) == [b"acked-0", b"acked-1", b"acked-2"]
    # The new data leader commits writes with the witness again.
    net.node(2).propose(b"after")
    net.tick_all(3)
    assert applied_data(net, 2)[-1] == b"after"


def test_witness_leader_accepts_no_proposal_and_no_read() -> None:
    net = two_plus_one(witness_payload_after_ticks=1)
    net.isolate(2)
    net.node(1).propose(b"acked")
    net.tick_all(3)
    net.heal()
    net.isolate(1)

    def no_answer_from_2(m: Message) -> bool:  # the witness leads, but never learns 2 caught up
        return not (m.frm == 2 and m.type == MessageType.APP_RESP)

    for _ in range(200):
        net.tick_all(1, stabilize=False)
        net.deliver(keep=no_answer_from_2)
        if net.node(W).role == StateRole.LEADER:
            break
    assert net.node(W).role == StateRole.LEADER
    with pytest.raises(ProposalDropped, match="witness"):
        net.node(W).propose(b"x")
    with pytest.raises(ProposalDropped, match="witness"):
        net.node(W).propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 1))
    with pytest.raises(ProposalDropped, match="witness"):
        net.node(W).read_index(b"r")
    assert not net.node(W).lease_held()


def test_a_data_node_never_stores_a_stripped_entry() -> None:
    net = Net([1, 2, W], witnesses=[W])
    n2 = net.node(2)
    last = n2.raft_log.last_index()

    n2.step(Message(MessageType.APP, to=2, frm=1, term=2, log_term=1, index=last,
                    entries=[Entry(2, last + 1, EntryType.NORMAL, b"ok"), Entry(2, last + 2, EntryType.STRIPPED)]))
    net.process_all()
    assert [e.type for e in net.nodes[2].storage.entries_[last + 1:]] == [EntryType.NORMAL]


def test_witness_campaigns_later_than_data_voters() -> None:
    net = Net([1, 2, W], witnesses=[W], election_tick=10)
    assert net.node(W).raft.randomized_election_timeout >= 20
    assert all(net.node(n).raft.randomized_election_timeout < 20 for n in (1, 2))


def test_witness_behind_the_compacted_log_gets_a_snapshot_without_data() -> None:
    net = two_plus_one()
    net.isolate(W)
    for i in range(4):
        net.node(1).propose(f"v{i}".encode())
    net.stabilize()
    st = net.nodes[1].storage
    idx = net.node(1).raft_log.applied
    st.create_snapshot(idx, net.node(1).conf, b"image-with-values")
    st.compact(idx)
    net.heal()
    net.tick_all(3)
    snaps = [m for m in net.sent_log if m.type == MessageType.SNAP and m.to == W]
    assert snaps and all(m.snapshot is not None and m.snapshot.data == META_ONLY for m in snaps)
    assert net.node(W).raft_log.last_index() == net.node(1).raft_log.last_index()


class NoHoldRaft(Raft):
    """The leader sends witnesses every entry whole at once (no floor, no hold-back)."""

    def _send_limit(self, to: int) -> int:
        return self.log.last_index()

    def _data_floor(self) -> int:
        return 0


def test_the_hold_back_is_what_keeps_values_off_the_witness() -> None:
    net = Net([1, 2, W], witnesses=[W], raft_class=NoHoldRaft)
    elect(net, 1)
    net.node(1).propose(b"secret")
    net.stabilize()
    assert sent_payloads_to(net, W) == [b"secret"]


def test_a_witness_added_at_runtime_catches_up_without_payloads_and_then_counts() -> None:
    net = Net([1, 2])
    elect(net, 1)
    net.node(1).propose(b"before-the-witness")
    net.stabilize()
    net.add_node(W)
    net.node(1).propose_conf_change(ConfChange(ConfChangeType.ADD_WITNESS, W))
    net.tick_all(3)
    assert net.node(W).is_witness() and net.node(1).conf.witnesses == {W}
    assert net.log_terms(W) == net.log_terms(1)
    assert payloads(net, W) == []  # the value written before it joined came without its payload
    net.isolate(2)
    net.node(1).propose(b"with-the-witness")
    net.tick_all(3)
    assert applied_data(net, 1)[-1] == b"with-the-witness"
