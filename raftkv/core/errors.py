"""Errors the core raises to its host. Both are expected in normal operation and carry what the host
needs to answer the client well (who the leader is, why a change was refused)."""

from __future__ import annotations

from .types import NONE


class ProposalDropped(Exception):
    """This node cannot accept the request now; `leader_hint` names the node that might (NONE: unknown)."""

    def __init__(self, leader_hint: int = NONE, reason: str = "not the leader") -> None:
        super().__init__(reason)
        self.leader_hint = leader_hint
        self.reason = reason


class ConfChangeRejected(Exception):
    """A membership change that is unsafe or meaningless right now (the message says which)."""
