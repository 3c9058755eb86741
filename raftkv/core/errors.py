"""Errors the core raises to its host. ProposalDropped and ConfChangeRejected are expected in normal
operation and carry what the host needs to answer the client well (who the leader is, why a change was
refused); StepRejected means a peer sent something no correct peer sends, for the host to log and drop."""

from __future__ import annotations

from .types import NONE, MessageType


class ProposalDropped(Exception):
    """This node cannot accept the request now; `leader_hint` names the node that might (NONE: unknown)."""

    def __init__(self, leader_hint: int = NONE, reason: str = "not the leader") -> None:
        super().__init__(reason)
        self.leader_hint = leader_hint
        self.reason = reason


class ConfChangeRejected(Exception):
    """A membership change that is unsafe or meaningless right now (the message says which)."""


class StepRejected(Exception):
    """`RaftNode.step` refused a message from the network without looking at it further: its type is one
    the core only makes for itself or hears from its own host (LOCAL_MESSAGES), as etcd-io/raft's
    ErrStepLocalMsg. The node's state is untouched; the host logs it and drops the message."""

    def __init__(self, message_type: MessageType, frm: int) -> None:
        super().__init__(f"local message type {message_type.name} arrived from the network (from node {frm})")
        self.message_type = message_type
        self.frm = frm
