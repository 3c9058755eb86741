"""Value types shared by the Raft core, its host and the simulator.

Everything here is plain data: the core receives these, computes, and hands these back. Nothing here
does I/O or reads a clock, so a host can persist them (msgpack), send them (protobuf) or replay them in
the simulator without the core noticing the difference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

NONE = 0
"""Node id meaning "nobody" (no vote cast, no known leader). Real node ids are >= 1."""


class EntryType(IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1
    STRIPPED = 2
    """A NORMAL entry whose payload was left out: what a witness holds of an entry every data voter has
    durably (index and term kept for election safety and log matching). Never applied, never sent to a
    data node."""


@dataclass(slots=True)
class Entry:
    """One log entry. `data` is opaque to the core except for CONF_CHANGE entries (see ConfChange)."""

    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""

    def size(self) -> int:
        """Approximate encoded size, used for batching limits and lag-in-bytes."""
        return len(self.data) + 24


class ConfChangeType(IntEnum):
    ADD_VOTER = 0
    REMOVE_NODE = 1
    ADD_LEARNER = 2
    PROMOTE_LEARNER = 3
    UPDATE_NODE = 4
    """Changes only the member's context (address, replication marks); voters and learners stay."""
    DEMOTE_VOTER = 5
    """A voter becomes a learner: it keeps receiving the log but no longer votes or counts for commit.
    For quorum purposes it is a voter's removal (one voter fewer), so it is as safe as one."""
    ADD_WITNESS = 6
    """A non-member (or a learner) becomes a witness: a voter that keeps the log's indices and terms but no
    data (DESIGN.md §7). For quorum purposes it is a voter's addition, so it is as safe as one."""


@dataclass(slots=True, frozen=True)
class ConfChange:
    """A single-server membership change. Encoded into an Entry of type CONF_CHANGE.

    `context` is opaque to the core; the host uses it for the new member's address and replication
    marks (sync / semi_sync), so every node learns them from the log.
    """

    type: ConfChangeType
    node_id: int
    context: bytes = b""

    def encode(self) -> bytes:
        # A tiny fixed layout keeps the core free of serialisation libraries.
        return bytes([int(self.type)]) + self.node_id.to_bytes(8, "big") + self.context

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        if len(data) < 9:
            raise ValueError("conf change entry too short")
        return ConfChange(ConfChangeType(data[0]), int.from_bytes(data[1:9], "big"), bytes(data[9:]))


@dataclass(slots=True, frozen=True)
class ConfState:
    """Cluster membership: who votes and who only receives the log.

    `witnesses` is a subset of `voters`: they vote and count for commit like any voter, but hold no data.
    """

    voters: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()
    witnesses: frozenset[int] = frozenset()

    def members(self) -> frozenset[int]:
        return self.voters | self.learners

    def data_voters(self) -> frozenset[int]:
        """The voters that hold the data (every voter but the witnesses)."""
        return self.voters - self.witnesses

    def apply(self, cc: ConfChange) -> ConfState:
        """The membership after `cc`; raises ValueError for a change that makes no sense here."""
        v, lr, w = set(self.voters), set(self.learners), set(self.witnesses)
        n = cc.node_id
        if cc.type in (ConfChangeType.DEMOTE_VOTER, ConfChangeType.ADD_VOTER) and n in w:
            raise ValueError(f"node {n} is a witness (it holds no data): remove it instead")
        if cc.type == ConfChangeType.ADD_WITNESS:
            if n in v:
                raise ValueError(f"node {n} is already a voter")
            lr.discard(n)
            v.add(n)
            w.add(n)
        elif cc.type == ConfChangeType.ADD_VOTER:
            if n in v:
                raise ValueError(f"node {n} is already a voter")
            lr.discard(n)
            v.add(n)
        elif cc.type == ConfChangeType.ADD_LEARNER:
            if n in v or n in lr:
                raise ValueError(f"node {n} is already a member")
            lr.add(n)
        elif cc.type == ConfChangeType.PROMOTE_LEARNER:
            if n not in lr:
                raise ValueError(f"node {n} is not a learner")
            lr.discard(n)
            v.add(n)
        elif cc.type == ConfChangeType.DEMOTE_VOTER:
            if n not in v:
                raise ValueError(f"node {n} is not a voter")
            v.discard(n)
            lr.add(n)
        elif cc.type == ConfChangeType.UPDATE_NODE:
            if n not in v and n not in lr:
                raise ValueError(f"node {n} is not a member")
        elif cc.type == ConfChangeType.REMOVE_NODE:
            if n not in v and n not in lr:
                raise ValueError(f"node {n} is not a member")
            v.discard(n)
            lr.discard(n)
            w.discard(n)
        if not v:
            raise ValueError("a cluster needs at least one voter")
        if not v - w:
            raise ValueError("a cluster needs at least one data voter (a witness holds no data)")
        return ConfState(frozenset(v), frozenset(lr), frozenset(w))


@dataclass(slots=True, frozen=True)
class HardState:
    """What must be on disk before the node answers anyone: term, vote, and how far it knows is committed."""

    term: int = 0
    vote: int = NONE
    commit: int = 0


@dataclass(slots=True, frozen=True)
class SnapshotMeta:
    """Where a snapshot sits in the log, and the membership at that point."""

    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)


@dataclass(slots=True)
class Snapshot:
    """A snapshot: metadata plus the state machine image (opaque bytes to the core). The server's store
    leaves `data` empty on the sending side (its transport streams the image apart) and puts a token
    naming the received, verified copy in it on the receiving side."""

    meta: SnapshotMeta
    data: bytes = b""


class MessageType(IntEnum):
    """Numbers are the wire encoding: a retired type leaves a gap, never a renumbering."""

    # Local messages: never sent over the wire, only stepped into the node by itself or its host.
    HUP = 0  # start an election (campaign)
    BEAT = 1  # leader: send heartbeats
    # 2 was PROP (proposals are appended on the leader directly; a follower refuses them): never reuse.
    # Replication
    APP = 3
    APP_RESP = 4
    HEARTBEAT = 5
    HEARTBEAT_RESP = 6
    SNAP = 7
    # Elections
    VOTE = 8
    VOTE_RESP = 9
    PRE_VOTE = 10
    PRE_VOTE_RESP = 11
    # Reads and leadership
    READ_INDEX = 12
    READ_INDEX_RESP = 13
    TRANSFER_LEADER = 14
    TIMEOUT_NOW = 15
    # Host feedback to the leader
    SNAP_STATUS = 16
    UNREACHABLE = 17
    # Membership: leader -> a node outside its committed configuration ("you were removed"); `index` is
    # the index of that configuration. A removed node is told, since nothing else ever reaches it.
    REMOVED = 18


LOCAL_MESSAGES = frozenset({MessageType.HUP, MessageType.BEAT, MessageType.SNAP_STATUS, MessageType.UNREACHABLE})
"""Types the core makes for itself (HUP, BEAT) or that its host reports (SNAP_STATUS, UNREACHABLE). One
arriving from the network is a forgery or a bug: `RaftNode.step` refuses it with StepRejected."""


@dataclass(slots=True)
class Message:
    """A Raft message. Fields not used by a type keep their defaults.

    `context` on HEARTBEAT / HEARTBEAT_RESP carries the leader's round number: a leader confirms its
    leadership round by round (a quorum answered a heartbeat sent at round r), and that one mechanism serves
    ReadIndex, lease reads and staleness proofs. On READ_INDEX / READ_INDEX_RESP it is the reader's context.

    Only Raft's fields: what the hosts put beside a message for themselves (staleness stamps, the
    sender's applied index) travels in the host's envelope (transport/envelope.py), not here.
    """

    type: MessageType
    to: int = NONE
    frm: int = NONE
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""
    data_floor: int = 0
    """On APP / HEARTBEAT to a witness: the highest index every data voter durably holds, as far as the
    witness's log matches the leader's. The witness drops the payloads it holds up to there."""


class StateRole(IntEnum):
    FOLLOWER = 0
    CANDIDATE = 1
    PRE_CANDIDATE = 2
    LEADER = 3


@dataclass(slots=True, frozen=True)
class SoftState:
    """Volatile state the host may want to show or react to; never persisted."""

    leader: int = NONE
    role: StateRole = StateRole.FOLLOWER


@dataclass(slots=True, frozen=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied `index`.

    `context` is the host's identifier of the read (or batch of reads) it asked for with read_index().
    """

    index: int
    context: bytes


@dataclass(slots=True)
class Ready:
    """One batch of work for the host, in the order it must be done:

    1. persist `snapshot` (if any), then `entries`, then `hard_state` (if any) -- durably (fsync);
    2. note the monotonic time of `round_sent` (if any), then send `messages` (safe to send before or
       after persisting); for each SNAP message, report its fate with `RaftNode.report_snapshot(to, ok)`
       (see there: a failure must be reported, or a lost snapshot leaves that follower behind);
       send `persisted_messages` only after step 1 is durable (votes and append acknowledgements);
    3. apply `committed_entries` to the state machine (conf changes were already taken into account
       by the core; the host records the resulting `conf_state` alongside the applied index);
    4. hand `read_states` to waiting readers once applied >= their index;
    5. call `Node.advance(ready)`.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    persisted_messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    conf_state: ConfState | None = None
    """Membership as of the last entry in `committed_entries`, when that batch holds a conf change."""
    round_sent: tuple[int, int] | None = None
    """(term, number) of the newest leadership round whose heartbeats are in `messages`. The host notes
    when it sends them, on its monotonic clock: leases and the leader's staleness proof are timed from
    the send time of the round `RaftNode.confirmed_round()` names."""
    strip_to: int = 0
    """Witness only: once this Ready is persisted, rewrite the stored NORMAL entries up to this index as
    STRIPPED (no payload): every data voter holds them durably. 0: nothing to do."""
