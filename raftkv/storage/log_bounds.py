"""The bounds arithmetic of a stored Raft log, shared by the LMDB store and its in-memory twin.

Both keep the same three facts in memory: the compacted prefix (index, term and membership of the last
entry folded into the state machine), the last index and its term, and the hard state. From those alone
the core's `LogStorage` questions are answered or refused (`CompactedError` below the first entry,
`UnavailableError` past the last) before a store reads a record; the reading itself is each store's
own (`_stored_term`, `_stored_entries`)."""

from __future__ import annotations

from abc import ABC, abstractmethod

from ..core import CompactedError, ConfState, Entry, HardState, UnavailableError


class LogBounds(ABC):
    """`LogStorage` over a store that sets `_compacted`, `_last_index`, `_last_term` and `_hard`."""

    _compacted: tuple[int, int, ConfState]
    _last_index: int
    _last_term: int
    _hard: HardState

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._hard, self._compacted[2]

    def first_index(self) -> int:
        return self._compacted[0] + 1

    def last_index(self) -> int:
        return self._last_index

    def term(self, index: int) -> int:
        c_idx, c_term, _ = self._compacted
        if index < c_idx:
            raise CompactedError(index)
        if index == c_idx:
            return c_term
        if index > self._last_index:
            raise UnavailableError(index)
        if index == self._last_index:
            return self._last_term
        return self._stored_term(index)

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        if lo < self.first_index():
            raise CompactedError(lo)
        if hi > self._last_index + 1:
            raise UnavailableError(hi)
        if lo >= hi:
            return []
        return self._stored_entries(lo, hi, max_bytes)

    @abstractmethod
    def _stored_term(self, index: int) -> int:
        """The term of entry `index`, first_index <= index < last_index, read from the records."""

    @abstractmethod
    def _stored_entries(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry]:
        """Entries [lo, hi) within the log's bounds, at most `max_bytes` (at least one), from the records."""
