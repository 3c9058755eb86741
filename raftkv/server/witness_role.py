"""Whether a node's `--witness` flag agrees with what its log says it is.

A witness holds no data: a data node started as a witness would serve nothing and its data would rot,
and a witness started as a data node would serve reads from an empty state machine. Either refuses to
start (exit USAGE) with one line naming the node and what to change."""

from __future__ import annotations

from ..core import ConfState, Entry, EntryType


class RoleMismatch(Exception):
    """The configuration this node has just learned (a joining node learns its role from the cluster's
    log or a snapshot) gives it another role than its `--witness` flag: it stops (exit USAGE) with the
    same line it would refuse to start with next time, rather than serve in a role nobody asked it for."""


def payload_missing(node_id: int, conf: ConfState, committed: list[Entry]) -> str | None:
    """Why a data member cannot apply `committed`: an entry in it is a witness's copy, without its payload
    (the node was a witness, then made a data member without wiping its data directory). Applying past
    it would leave its state machine silently behind its peers'. None: nothing wrong (a witness, or a
    node that is no member yet and learns its role from this very log)."""
    if node_id not in conf.members() or node_id in conf.witnesses:
        return None
    for e in committed:
        if e.type == EntryType.STRIPPED:
            return (f"node {node_id} holds data but its log entry {e.index} has no payload (it was a witness): "
                    f"remove it, wipe its data directory and add it again")
    return None


def witness_mismatch(node_id: int, witness_flag: bool, conf: ConfState) -> str | None:
    """The refusal's line, or None when the flag agrees with `conf` (or `conf` does not name the node yet:
    a joining node learns its role from the leader)."""
    if node_id not in conf.members():
        return None
    is_witness = node_id in conf.witnesses
    if witness_flag and not is_witness:
        return (f"node {node_id} is started with --witness, but its configuration makes it a data member "
                f"(witnesses: {sorted(conf.witnesses) or 'none'}); start it without --witness")
    if is_witness and not witness_flag:
        return (f"node {node_id} is a witness in its configuration (it holds no data): start it with --witness")
    return None
