"""What a leader sends a witness, and what a witness may forget (DESIGN.md §7).

A witness is a voter that holds no data. Its log keeps every entry's index and term (all that election
safety and log matching look at), but a normal entry's payload only while some data voter may still
need it from the witness:

- the *data floor* D is the highest index that every data voter (the leader included, by its own durable
  log) durably holds. Entries up to D go to a witness stripped of their payload; a witness told D drops
  the payloads it holds up to there.
- entries beyond D are held back from a witness, so a healthy cluster's witness never sees a value, until
  the oldest uncommitted entry has waited `Config.witness_payload_after_ticks`: then they go with their
  payload, and the witness's vote commits them while a data voter is down or slow.
- a witness that leads (a caretaker) never sends a data node a stripped entry or a snapshot: it has no
  payload or data to give.

Conf-change entries always travel whole: every member, a witness too, needs the membership.
"""

from __future__ import annotations

from collections.abc import Mapping

from .types import ConfState, Entry, EntryType

META_ONLY = b"meta-only"
"""Data and context of a snapshot message to a witness: the snapshot is metadata only (index, term,
membership), so the host sends it as it is, never streaming a state machine image after it, and the
witness's store installs no state machine (the snapshot's membership may predate the witness)."""


def data_floor(conf: ConfState, matches: Mapping[int, int]) -> int:
    """The highest index every data voter durably holds (0 while any is unknown)."""
    data = conf.data_voters()
    if not data:
        return 0
    return min(matches.get(n, 0) for n in data)


def stripped(e: Entry) -> Entry:
    """`e` without its payload, if it is a normal entry (a conf change is kept whole)."""
    if e.type != EntryType.NORMAL:
        return e
    return Entry(e.term, e.index, EntryType.STRIPPED)


def for_witness(ents: list[Entry], floor: int, limit: int) -> list[Entry]:
    """The entries of an APP to a witness: stripped up to `floor`, whole up to `limit`, none beyond."""
    out: list[Entry] = []
    for e in ents:
        if e.index > max(floor, limit):
            break
        out.append(stripped(e) if e.index <= floor else e)
    return out


def for_data_node(ents: list[Entry]) -> list[Entry]:
    """The prefix of `ents` a data node may be sent: up to the first entry whose payload we lack."""
    for i, e in enumerate(ents):
        if e.type == EntryType.STRIPPED:
            return ents[:i]
    return ents


def strip_held(ents: list[Entry], floor: int) -> int:
    """Drop, in place, the payloads of the normal entries in `ents` up to `floor`; how many were dropped."""
    n = 0
    for i, e in enumerate(ents):
        if e.index > floor:
            break
        if e.type == EntryType.NORMAL:
            ents[i] = stripped(e)
            n += 1
    return n
