"""Membership as the log says it is.

raftkv changes membership one server at a time, and a node uses the newest configuration *in its log*,
committed or not (Raft thesis §4.1). A truncated conf-change entry therefore takes its configuration with
it, so we keep the history of configurations still in the log, oldest first. Any two successive
configurations differ by one voter, so their majorities overlap; the leader additionally refuses a change
until it has committed an entry of its own term, which closes the known hole in single-server changes.
"""

from __future__ import annotations

from .types import ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState


class ConfLog:
    def __init__(self, base_index: int, base: ConfState) -> None:
        self._history: list[tuple[int, ConfState]] = [(base_index, base)]

    @property
    def current(self) -> ConfState:
        return self._history[-1][1]

    @property
    def current_index(self) -> int:
        """Log index of the entry that introduced the current configuration."""
        return self._history[-1][0]

    def truncate_from(self, index: int) -> bool:
        """Forget configurations introduced at `index` or later. True if the current one changed."""
        changed = False
        while len(self._history) > 1 and self._history[-1][0] >= index:
            self._history.pop()
            changed = True
        return changed

    def observe(self, entries: list[Entry]) -> bool:
        """Take in newly appended entries (after truncate_from). True if the configuration changed.

        A conf change that does not apply (e.g. removing a non-member) is a no-op on every node alike.
        """
        changed = False
        for e in entries:
            if e.type != EntryType.CONF_CHANGE:
                continue
            try:
                nxt = self.current.apply(ConfChange.decode(e.data))
            except ValueError:
                continue
            self._history.append((e.index, nxt))
            changed = True
        return changed

    def as_of(self, index: int) -> ConfState:
        """The configuration in force at log index `index` (for snapshots taken at an applied index)."""
        for i, conf in reversed(self._history):
            if i <= index:
                return conf
        return self._history[0][1]

    def reset(self, base_index: int, base: ConfState) -> None:
        self._history = [(base_index, base)]



def bootstrap_entries(conf: ConfState, contexts: dict[int, bytes] | None = None) -> tuple[list[Entry], HardState]:
    """The first entries of a new cluster's log: one conf change per initial member, at term 1, already
    committed. Every founding node writes the same entries, and a node that joins later learns the
    founding membership (and, through `contexts`, e.g. addresses) by replaying them like any other part
    of the log (as etcd does)."""
    ctx = contexts or {}
    # Data voters first: a witness may not be the only voter at any point of the log.
    changes = [ConfChange(ConfChangeType.ADD_VOTER, n, ctx.get(n, b"")) for n in sorted(conf.data_voters())]
    changes += [ConfChange(ConfChangeType.ADD_WITNESS, n, ctx.get(n, b"")) for n in sorted(conf.witnesses)]
    changes += [ConfChange(ConfChangeType.ADD_LEARNER, n, ctx.get(n, b"")) for n in sorted(conf.learners)]
    entries = [Entry(1, i + 1, EntryType.CONF_CHANGE, cc.encode()) for i, cc in enumerate(changes)]
    return entries, HardState(term=1, vote=0, commit=len(entries))
