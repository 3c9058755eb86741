"""Core messages in their host envelope (envelope.py) <-> protobuf, losslessly: the Raft fields, and the
envelope's stamps in fields 13-16 of the same RaftMessage (zero for a message sent without them)."""

from __future__ import annotations

from ..core import ConfState, Entry, EntryType, Message, MessageType, Snapshot, SnapshotMeta
from ..proto.stubs import raft_pb2 as pb
from .envelope import StampedMessage


def to_proto(m: Message, snapshot_tail: int | None = None) -> pb.RaftMessage:
    """`snapshot_tail`: put only the last this-many bytes of the snapshot's data in the message, marked
    `chunked` (the rest went ahead as chunks)."""
    out = pb.RaftMessage(
        type=int(m.type), to=m.to, **{"from": m.frm}, term=m.term, log_term=m.log_term, index=m.index,
        commit=m.commit, reject=m.reject, reject_hint=m.reject_hint, context=m.context, data_floor=m.data_floor,
        entries=[pb.Entry(term=e.term, index=e.index, type=int(e.type), data=e.data) for e in m.entries],
    )
    if isinstance(m, StampedMessage):
        out.stamp, out.echo_stamp, out.echo_commit, out.applied = m.stamp, m.echo_stamp, m.echo_commit, m.applied
    if m.snapshot is not None:
        meta = m.snapshot.meta
        data = m.snapshot.data
        if snapshot_tail is not None:
            data = data[len(data) - snapshot_tail:]
        out.snapshot.CopyFrom(pb.Snapshot(index=meta.index, term=meta.term, data=data,
                                          chunked=snapshot_tail is not None,
                                          conf=pb.ConfState(voters=sorted(meta.conf.voters),
                                                            learners=sorted(meta.conf.learners),
                                                            witnesses=sorted(meta.conf.witnesses))))
    return out


def from_proto(p: pb.RaftMessage, snapshot_head: bytes = b"") -> StampedMessage:
    """`snapshot_head`: the chunks that went ahead of a `chunked` snapshot, joined."""
    snap = None
    if p.HasField("snapshot"):
        s = p.snapshot
        data = snapshot_head + s.data if s.chunked else s.data
        snap = Snapshot(SnapshotMeta(s.index, s.term, ConfState(frozenset(s.conf.voters), frozenset(s.conf.learners),
                                                            frozenset(s.conf.witnesses))),
                        data)
    return StampedMessage(
        type=MessageType(p.type), to=p.to, frm=getattr(p, "from"), term=p.term, log_term=p.log_term, index=p.index,
        entries=[Entry(e.term, e.index, EntryType(e.type), e.data) for e in p.entries], commit=p.commit,
        reject=p.reject, reject_hint=p.reject_hint, snapshot=snap, context=p.context, data_floor=p.data_floor,
        stamp=p.stamp,
        echo_stamp=p.echo_stamp, echo_commit=p.echo_commit, applied=p.applied,
    )
