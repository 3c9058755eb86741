"""Settings of one Raft node. Times are in ticks: the host decides how long a tick is."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Config:
    id: int
    election_tick: int = 10
    """A follower that hears no leader for a random time in [election_tick, 2*election_tick) campaigns."""
    heartbeat_tick: int = 1
    pre_vote: bool = True
    """Ask for votes in a trial round first, so a node back from a partition cannot depose a healthy leader."""
    check_quorum: bool = True
    """A leader that has not heard from a quorum within election_tick steps down."""
    max_size_per_msg: int = 1 << 20
    """Upper bound on the entry bytes in one APP message (at least one entry is always sent)."""
    max_inflight_msgs: int = 256
    """How many APP messages may be unacknowledged per follower while replicating (the pipeline window)."""
    max_committed_size_per_ready: int = 4 << 20
    """Upper bound on the bytes of committed entries handed out in one Ready."""
    witness_payload_after_ticks: int = 2
    """A leader sends a witness only the indices and terms of entries every data voter durably holds. An
    entry beyond that goes to the witness with its payload once the oldest uncommitted entry has waited
    this many ticks: then the witness's vote commits it while a data voter is down or slow."""
    defer_commit_notice: bool = False
    """A leader whose commit index moves does not tell its followers at once with an empty append (etcd's
    behaviour, the default): the next append or heartbeat carries the new index, or the host calls
    `RaftNode.send_commit_notice` when it has waited long enough (`commit_notice_pending`). On a
    machine where the leader, its followers and its clients share a few cores, the notice round competes
    with the answer to the writer and with its next request (benchmarks/README.md, "A lone write")."""
    applied: int = 0
    """The state machine's applied index on restart; committed entries after it are handed out again."""
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    """The only source of randomness in the core (election timeouts); seeded by the host or simulator."""

    def validate(self) -> None:
        if self.id <= 0:
            raise ValueError("node id must be >= 1")
        if self.heartbeat_tick <= 0:
            raise ValueError("heartbeat_tick must be > 0")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError("election_tick must be greater than heartbeat_tick")
        if self.witness_payload_after_ticks < 0:
            raise ValueError("witness_payload_after_ticks must be >= 0")
        if self.max_inflight_msgs <= 0:
            raise ValueError("max_inflight_msgs must be > 0")
