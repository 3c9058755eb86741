"""A node that was removed from the cluster: how it finds out, and what it does then.

A removed member must not go on looking like a member that has lost its leader ("election in progress")
while serving ever staler reads. It learns of its removal in one of three ways:

- it applies the committed entry that removes it (a leader removing itself, or a follower that received
  the entry before the leader stopped replicating to it);
- a leader tells it (`MessageType.REMOVED`): the leader keeps telling a removed member for a while after
  the removal commits, and answers any later message from it (a removed node back from a partition or a
  restart campaigns, and so reaches the leader);
- peers refuse its streams because it is not a member: only a quorum of the voters it knows agreeing
  counts, since one peer that has not yet applied this node's addition would refuse it too.

Then the node logs `removed from the cluster`, refuses every request with FAILED_PRECONDITION, reports not
ready, leaves a marker file in its data directory (so a restart refuses at once), and exits with
NEEDS_OPERATOR after a short grace, so a supervisor does not start it again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from .errors import HostError

log = structlog.get_logger("raftkv.host")

GRACE_SECONDS = 2.0
"""How long a removed node keeps answering (with the refusal) before it exits."""
MARKER = "REMOVED"
"""File in the data directory of a node that learned it was removed; holds the one-line reason."""


class MemberRemoved(HostError):
    """This node is no longer a member of the cluster: it serves nothing. Try another node."""


def marker_text(data_dir: str) -> str | None:
    """The reason recorded by a node that learned it was removed, or None."""
    path = Path(data_dir) / MARKER
    try:
        return path.read_text().strip() or f"node was removed from the cluster ({path})"
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot read {path}: {e}"


class Removal:
    def __init__(self, node_id: int, data_dir: str) -> None:
        self.node_id = node_id
        self.data_dir = data_dir
        self.how = ""
        self.event = asyncio.Event()
        self._refused_by: set[int] = set()

    @property
    def removed(self) -> bool:
        return self.event.is_set()

    @property
    def message(self) -> str:
        return f"node {self.node_id} was removed from the cluster"

    def error(self) -> MemberRemoved:
        return MemberRemoved(f"{self.message}; it serves nothing: use another member")

    def note(self, how: str) -> bool:
        """Record the removal (once); True the first time."""
        if self.removed:
            return False
        self.how = how
        self.event.set()
        log.error("removed from the cluster", id=self.node_id, how=how,
                  detail=f"refusing every request; exiting in {GRACE_SECONDS:.0f}s with NEEDS_OPERATOR (65)")
        text = (f"{self.message} ({how}); to bring this machine back, wipe its data directory, add it again "
                f"(kv members add ID ADDR --learner) and start it with --join")
        try:
            (Path(self.data_dir) / MARKER).write_text(text + "\n")
        except OSError as e:
            log.error("cannot write the removal marker", path=str(Path(self.data_dir) / MARKER), error=str(e))
        return True

    def refused_by(self, peer: int, voters: frozenset[int]) -> bool:
        """A peer refused our stream as a non-member. True once a quorum of the voters we know (ourselves
        left out) have, i.e. the cluster agrees."""
        if peer in voters:
            self._refused_by.add(peer)
        others = voters - {self.node_id}
        return bool(others) and len(self._refused_by & others) >= len(voters) // 2 + 1
