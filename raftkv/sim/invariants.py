"""Raft's safety properties, checked as the simulation runs (Raft paper Figure 3), plus liveness.

- election safety: at most one leader per term, ever;
- log matching: two logs holding an entry with the same index and term agree on everything up to it;
- leader completeness: every entry applied anywhere (so committed) is in the log of every later leader;
- state-machine safety: no two nodes apply different entries at one index;
- no committed entry is ever lost (the two above, across crashes that lose unsynced writes);
- liveness (checked by the run, host_run.py): once faults heal, a leader emerges and serves."""

from __future__ import annotations

from dataclasses import dataclass

from ..core import CompactedError, Entry, EntryType, RaftNode, StateRole, UnavailableError


def _stripped(a: Entry, b: Entry) -> bool:
    """One of two entries at an index is a witness's copy without its payload: only terms compare."""
    return EntryType.STRIPPED in (a.type, b.type)


class Violation(Exception):
    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


@dataclass(slots=True)
class _AppliedEntry:
    term: int
    data: bytes
    node: int


class SafetyChecker:
    def __init__(self) -> None:
        self.leader_of_term: dict[int, int] = {}
        self.applied_at: dict[int, _AppliedEntry] = {}
        self.max_applied = 0
        self.elections = 0

    def on_apply(self, node_id: int, e: Entry) -> None:
        seen = self.applied_at.get(e.index)
        if seen is None:
            self.applied_at[e.index] = _AppliedEntry(e.term, e.data, node_id)
            if e.index > self.max_applied:
                self.max_applied = e.index
        elif seen.term != e.term or seen.data != e.data:
            raise Violation(
                "state-machine safety",
                f"node {node_id} applied (term {e.term}, {e.data[:24]!r}) at index {e.index}, but node "
                f"{seen.node} applied (term {seen.term}, {seen.data[:24]!r}) there",
            )

    def observe_leader(self, node: RaftNode) -> bool:
        """Check a node seen leading; True if it is the first sighting of this term's leader."""
        term = node.term
        holder = self.leader_of_term.get(term)
        if holder is None:
            self.leader_of_term[term] = node.id
            self.elections += 1
            self._check_completeness(node)
            return True
        if holder != node.id:
            raise Violation("election safety", f"nodes {holder} and {node.id} are both leaders of term {term}")
        return False

    def _check_completeness(self, node: RaftNode) -> None:
        log = node.raft_log
        first = log.first_index()
        for idx in range(max(first, 1), self.max_applied + 1):
            want = self.applied_at.get(idx)
            if want is None:
                continue
            try:
                got = log.term(idx)
            except (CompactedError, UnavailableError):
                got = None
            if got != want.term:
                raise Violation(
                    "leader completeness",
                    f"node {node.id} became leader of term {node.term} without committed entry {idx} "
                    f"(term {want.term}, applied by node {want.node}); its log has term {got} there",
                )

    def check_log_matching(self, nodes: list[RaftNode]) -> None:
        logs = []
        for n in nodes:
            log = n.raft_log
            first = log.first_index()
            logs.append((n.id, first, {e.index: e for e in log.entries(first)}))
        for i in range(len(logs)):
            for j in range(i + 1, len(logs)):
                a_id, a_first, a = logs[i]
                b_id, b_first, b = logs[j]
                common = sorted(set(a) & set(b), reverse=True)
                matched = False
                for idx in common:
                    ea, eb = a[idx], b[idx]
                    if not matched:
                        matched = ea.term == eb.term
                    if matched and (ea.term != eb.term or (ea.data != eb.data and not _stripped(ea, eb))):
                        raise Violation(
                            "log matching",
                            f"nodes {a_id} and {b_id} agree on a later entry but differ at index {idx}: "
                            f"(term {ea.term}, {ea.data[:24]!r}) vs (term {eb.term}, {eb.data[:24]!r})",
                        )

    def leaders(self, nodes: list[RaftNode]) -> None:
        for n in nodes:
            if n.role == StateRole.LEADER:
                self.observe_leader(n)
