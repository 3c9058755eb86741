"""Bugs planted on purpose, to show that a test or a checker catches what it claims to.

One module, so that the core's tests, the core scenarios and the simulator all plant the same bug."""

from __future__ import annotations

from raftkv.core.quorum import quorum_index
from raftkv.core.raft import Raft


class CountingCommitRaft(Raft):
    """Commits whatever a majority holds, whatever its term -- the bug the Raft paper's Figure 8 warns
    against (§5.4.2: a leader commits by counting replicas only entries of its own term)."""

    def maybe_commit(self) -> bool:
        mci = quorum_index(self.conf.voters, {nid: pr.match for nid, pr in self.prs.items()})
        if mci > self.log.committed:
            self.log.commit_to(mci)
            return True
        return False
