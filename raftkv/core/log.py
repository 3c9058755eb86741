"""The node's view of its Raft log: what is durable (read through LogStorage) plus an unstable tail.

Entries enter the unstable tail when appended (a leader's proposals, a follower's APP). The host is handed
them in a Ready, persists them, and `stable_to` drops them from the tail; from then on they are read from
storage. A truncation (a follower overwriting a conflicting suffix) happens in the unstable tail first and
reaches storage when the host persists the replacement entries.
"""

from __future__ import annotations

from .storage import CompactedError, LogStorage, UnavailableError, limit_size
from .types import Entry, Snapshot


class LogError(Exception):
    """An impossible log operation: a bug in the core or a host that broke the Ready contract."""


class Unstable:
    """Entries (and possibly a snapshot) not yet durable. `offset` is the index of entries[0]."""

    __slots__ = ("snapshot", "entries", "offset")

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.meta.index
        return None

    def maybe_first_index(self) -> int | None:
        if self.snapshot is not None:
            return self.snapshot.meta.index + 1
        return None

    def maybe_term(self, i: int) -> int | None:
        if i < self.offset:
            if self.snapshot is not None and self.snapshot.meta.index == i:
                return self.snapshot.meta.term
            return None
        last = self.maybe_last_index()
        if last is None or i > last:
            return None
        return self.entries[i - self.offset].term

    def stable_to(self, i: int, t: int) -> bool:
        """Entries up to `i` (of term `t`) are now durable. Ignored if they were replaced meanwhile."""
        term = self.maybe_term(i)
        if term is None or term != t or i < self.offset:
            return False
        del self.entries[: i + 1 - self.offset]
        self.offset = i + 1
        return True

    def stable_snap_to(self, i: int) -> None:
        if self.snapshot is not None and self.snapshot.meta.index == i:
            self.snapshot = None

    def restore(self, snap: Snapshot) -> None:
        self.offset = snap.meta.index + 1
        self.entries = []
        self.snapshot = snap

    def truncate_and_append(self, ents: list[Entry]) -> None:
        after = ents[0].index
        if after == self.offset + len(self.entries):
            self.entries.extend(ents)
        elif after <= self.offset:
            # Replaces everything unstable, and (once persisted) the storage suffix from `after` on.
            self.offset = after
            self.entries = list(ents)
        else:
            del self.entries[after - self.offset :]
            self.entries.extend(ents)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        return self.entries[lo - self.offset : hi - self.offset]


class RaftLog:
    def __init__(self, storage: LogStorage, max_committed_size_per_ready: int) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        self.committed = first - 1
        self.applied = first - 1
        self.max_committed_size = max_committed_size_per_ready

    # -- indices and terms -----------------------------------------------------------------------
    def first_index(self) -> int:
        i = self.unstable.maybe_first_index()
        return i if i is not None else self.storage.first_index()

    def last_index(self) -> int:
        i = self.unstable.maybe_last_index()
        return i if i is not None else self.storage.last_index()

    def persisted_last_index(self) -> int:
        """The last index durable here and still part of our log (not about to be overwritten)."""
        if self.unstable.snapshot is not None:
            return min(self.storage.last_index(), self.unstable.offset - 1)
        if self.unstable.entries:
            return min(self.storage.last_index(), self.unstable.offset - 1)
        return self.storage.last_index()

    def term(self, i: int) -> int:
        """Term of entry `i`; raises CompactedError / UnavailableError outside [first-1, last]."""
        t = self.unstable.maybe_term(i)
        if t is not None:
            return t
        dummy = self.first_index() - 1
        if i < dummy:
            raise CompactedError(i)
        if i > self.last_index():
            raise UnavailableError(i)
        return self.storage.term(i)

    def term_or_zero(self, i: int) -> int:
        try:
            return self.term(i)
        except (CompactedError, UnavailableError):
            return 0

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, i: int, t: int) -> bool:
        try:
            return self.term(i) == t
        except (CompactedError, UnavailableError):
            return False

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Raft §5.4.1: would a candidate with this last entry have a log at least as complete as ours?"""
        lt = self.last_term()
        return term > lt or (term == lt and last_index >= self.last_index())

    # -- reading entries -------------------------------------------------------------------------
    def entries(self, lo: int, hi: int | None = None, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi) (hi defaults to last+1), from storage and the unstable tail."""
        last = self.last_index()
        if hi is None:
            hi = last + 1
        if lo > last or lo >= hi:
            return []
        first = self.first_index()
        if lo < first:
            raise CompactedError(lo)
        if hi > last + 1:
            raise UnavailableError(hi)
        out: list[Entry] = []
        off = self.unstable.offset
        if lo < off:
            out = self.storage.entries(lo, min(hi, off), max_bytes)
            if len(out) < min(hi, off) - lo:
                return out  # storage stopped early on the size limit
        if hi > off:
            out = out + self.unstable.slice(max(lo, off), hi)
        return limit_size(out, max_bytes)

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    # -- appending -------------------------------------------------------------------------------
    def append(self, ents: list[Entry]) -> int:
        if not ents:
            return self.last_index()
        if ents[0].index - 1 < self.committed:
            raise LogError(f"append at {ents[0].index} would overwrite committed index {self.committed}")
        self.unstable.truncate_and_append(ents)
        return self.last_index()

    def find_conflict(self, ents: list[Entry]) -> int:
        """Index of the first entry in `ents` that we do not hold with the same term (0: none)."""
        for e in ents:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= `index` whose term is <= `term`, and its term: the leader can skip back
        past a whole term of conflicting entries in one round trip instead of one entry at a time."""
        while index > 0:
            try:
                t = self.term(index)
            except CompactedError:
                return index, 0
            except UnavailableError:
                index = self.last_index()
                continue
            if t <= term:
                return index, t
            index -= 1
        return 0, 0

    # -- commit and apply ------------------------------------------------------------------------
    def commit_to(self, c: int) -> None:
        if c > self.committed:
            if c > self.last_index():
                raise LogError(f"commit {c} is beyond the last index {self.last_index()}")
            self.committed = c

    def maybe_commit(self, max_index: int, term: int) -> bool:
        """Raft §5.4.2: an index is committed by counting replicas only if its entry is of our term."""
        if max_index > self.committed and self.term_or_zero(max_index) == term:
            self.commit_to(max_index)
            return True
        return False

    def has_next_committed_entries(self) -> bool:
        return self.committed > self.applied and self.unstable.snapshot is None

    def next_committed_entries(self) -> list[Entry]:
        if not self.has_next_committed_entries():
            return []
        return self.entries(self.applied + 1, self.committed + 1, self.max_committed_size)

    def applied_to(self, i: int) -> None:
        if i == 0:
            return
        if i > self.committed or i < self.applied:
            raise LogError(f"applied {i} out of range [applied {self.applied}, committed {self.committed}]")
        self.applied = i

    # -- durability feedback ---------------------------------------------------------------------
    def stable_to(self, i: int, t: int) -> bool:
        return self.unstable.stable_to(i, t)

    def stable_snap_to(self, i: int) -> None:
        self.unstable.stable_snap_to(i)

    def unstable_entries(self) -> list[Entry]:
        return list(self.unstable.entries)

    def restore(self, snap: Snapshot) -> None:
        self.committed = snap.meta.index
        self.unstable.restore(snap)
