"""The core's contract with its host, as etcd-io/raft's rawnode.go states it: what `step` refuses, how
the wire numbers of message types stay put, and what each snapshot report does to the leader."""

from __future__ import annotations

import pytest

from raftkv.core import LOCAL_MESSAGES, Message, MessageType, StateRole, StepRejected

from .harness import Net


def elect(net: Net, nid: int) -> None:
    net.node(nid).campaign()
    net.stabilize()
    assert net.node(nid).role == StateRole.LEADER


# -- step refuses local message types ---------------------------------------------------------------

@pytest.mark.parametrize("mtype", sorted(LOCAL_MESSAGES), ids=lambda t: t.name)
@pytest.mark.parametrize("target", ["leader", "follower"])
def test_step_rejects_local_message_types_from_the_network(mtype: MessageType, target: str) -> None:
    """A HUP would make a follower campaign, a BEAT a leader broadcast, a forged SNAP_STATUS or
    UNREACHABLE would reset the leader's view of a follower: none may come from a peer."""
    net = Net([1, 2, 3])
    elect(net, 1)
    nid = 1 if target == "leader" else 2
    node = net.node(nid)
    before = (node.role, node.term, node.hard_state(), node.status().progress)
    with pytest.raises(StepRejected) as err:
        node.step(Message(mtype, to=nid, frm=3, term=node.term))
    assert err.value.message_type == mtype and err.value.frm == 3
    assert mtype.name in str(err.value)
    assert (node.role, node.term, node.hard_state(), node.status().progress) == before
    assert not node.has_ready()


def test_network_message_types_are_still_stepped() -> None:
    net = Net([1, 2, 3])
    elect(net, 1)
    node = net.node(2)
    node.step(Message(MessageType.HEARTBEAT, to=2, frm=1, term=node.term, commit=node.raft_log.committed))
    assert node.has_ready()


def test_message_type_numbers_are_the_wire_encoding() -> None:
    """Peers of different versions exchange these numbers: a type may retire (leaving its number unused),
    never move. 2 was PROP."""
    assert {t.name: int(t) for t in MessageType} == {
        "HUP": 0, "BEAT": 1, "APP": 3, "APP_RESP": 4, "HEARTBEAT": 5, "HEARTBEAT_RESP": 6, "SNAP": 7,
        "VOTE": 8, "VOTE_RESP": 9, "PRE_VOTE": 10, "PRE_VOTE_RESP": 11, "READ_INDEX": 12,
        "READ_INDEX_RESP": 13, "TRANSFER_LEADER": 14, "TIMEOUT_NOW": 15, "SNAP_STATUS": 16,
        "UNREACHABLE": 17, "REMOVED": 18,
    }


# -- snapshot reports -------------------------------------------------------------------------------

def _snapshot_sent_to_3(net: Net) -> int:
    """Node 3 falls behind a compacted log; the leader sends it a snapshot, which is lost. Returns the
    snapshot's index. Node 3 is in the leader's SNAPSHOT state afterwards."""
    elect(net, 1)
    net.isolate(3)
    for i in range(10):
        net.node(1).propose(f"v{i}".encode())
    net.stabilize()
    applied = net.node(1).raft_log.applied
    st = net.nodes[1].storage
    st.create_snapshot(applied, net.node(1).conf_as_of(applied), b"state")
    st.compact(applied)
    net.heal()
    lost: list[Message] = []

    def drop_snapshots(m: Message) -> bool:
        if m.type == MessageType.SNAP:
            lost.append(m)
            return False
        return True

    for _ in range(5):
        net.tick(1)
        net.deliver(keep=drop_snapshots)
        net.deliver(keep=drop_snapshots)
        if lost:
            break
    assert len(lost) == 1 and lost[0].snapshot is not None
    pr = net.node(1).status().progress[3]
    assert pr.state == "snapshot" and pr.pending_snapshot == applied
    return applied


def _progress_3(net: Net):  # noqa: ANN202 (a ProgressStatus)
    return net.node(1).status().progress[3]


def _sent_to_3(net: Net, mtype: MessageType) -> int:
    return sum(1 for m in net.sent_log if m.to == 3 and m.type == mtype)


def test_unreported_lost_snapshot_leaves_the_follower_waiting() -> None:
    """Without a report, and without the follower's answer, the leader sends that follower nothing but
    heartbeats for the rest of its term: why a host must report failures."""
    net = Net([1, 2, 3])
    _snapshot_sent_to_3(net)
    apps, snaps = _sent_to_3(net, MessageType.APP), _sent_to_3(net, MessageType.SNAP)
    net.node(1).propose(b"more")
    net.tick_all(8)
    assert _progress_3(net).state == "snapshot"
    assert (_sent_to_3(net, MessageType.APP), _sent_to_3(net, MessageType.SNAP)) == (apps, snaps)
    assert net.node(3).raft_log.committed < net.node(1).raft_log.committed


def test_failed_snapshot_report_makes_the_leader_send_another() -> None:
    net = Net([1, 2, 3])
    index = _snapshot_sent_to_3(net)
    net.node(1).report_snapshot(3, False)
    pr = _progress_3(net)
    assert pr.state == "probe" and pr.pending_snapshot == 0 and pr.next <= index
    net.tick_all(3)
    assert _sent_to_3(net, MessageType.SNAP) == 2
    assert net.nodes[3].storage.snapshot().meta.index == index
    assert net.node(3).raft_log.committed == net.node(1).raft_log.committed
    assert _progress_3(net).state == "replicate"


def test_early_ok_for_a_lost_snapshot_costs_a_round_trip_not_the_follower() -> None:
    """A host may report ok once it handed the snapshot to a stream that delivers it (as the inline
    transport does). The leader then probes after the snapshot, waiting for the follower's answer or a
    heartbeat response first; if the snapshot was in fact lost, the follower's refusal leads back to a
    new snapshot."""
    net = Net([1, 2, 3])
    index = _snapshot_sent_to_3(net)
    net.node(1).report_snapshot(3, True)
    pr = _progress_3(net)
    assert pr.state == "probe" and pr.next == index + 1
    apps = _sent_to_3(net, MessageType.APP)
    net.node(1).propose(b"more")
    net.process_all()
    assert _sent_to_3(net, MessageType.APP) == apps, "probed before hearing from the follower"
    net.tick_all(3)
    assert _sent_to_3(net, MessageType.SNAP) == 2
    assert net.node(3).raft_log.committed == net.node(1).raft_log.committed
    assert [e.data for e in net.nodes[3].applied][-1] == b"more"


def test_follower_answer_needs_no_report_and_a_late_report_is_ignored() -> None:
    net = Net([1, 2, 3])
    elect(net, 1)
    net.isolate(3)
    for i in range(10):
        net.node(1).propose(f"v{i}".encode())
    net.stabilize()
    applied = net.node(1).raft_log.applied
    net.nodes[1].storage.create_snapshot(applied, net.node(1).conf_as_of(applied), b"state")
    net.nodes[1].storage.compact(applied)
    net.heal()
    net.tick_all(3)
    assert _sent_to_3(net, MessageType.SNAP) == 1
    pr = _progress_3(net)
    assert pr.state == "replicate" and pr.match == net.node(1).raft_log.last_index()
    net.node(1).report_snapshot(3, False)  # e.g. the transport's deadline passed after delivery
    assert _progress_3(net) == pr


def test_snapshot_report_on_a_follower_or_for_a_stranger_changes_nothing() -> None:
    net = Net([1, 2, 3])
    elect(net, 1)
    before = net.node(1).status()
    net.node(1).report_snapshot(9, False)
    net.node(2).report_snapshot(3, False)
    assert net.node(1).status() == before
    assert not net.node(2).has_ready()
