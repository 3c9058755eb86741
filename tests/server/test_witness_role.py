"""The witness role checks of a starting or applying node (server/witness_role.py)."""

from __future__ import annotations

from raftkv.core import ConfState, Entry, EntryType
from raftkv.server.witness_role import payload_missing, witness_mismatch

CONF = ConfState(frozenset({1, 2, 3}), witnesses=frozenset({3}))


def test_a_witness_flag_must_agree_with_the_log() -> None:
    assert witness_mismatch(3, True, CONF) is None and witness_mismatch(1, False, CONF) is None
    assert "start it without --witness" in (witness_mismatch(1, True, CONF) or "")
    assert "start it with --witness" in (witness_mismatch(3, False, CONF) or "")
    assert witness_mismatch(4, True, CONF) is None  # not a member yet: it learns its role from the log


def test_a_data_member_never_applies_an_entry_without_its_payload() -> None:
    batch = [Entry(2, 7, EntryType.NORMAL, b"x"), Entry(2, 8, EntryType.STRIPPED)]
    assert "log entry 8 has no payload (it was a witness)" in (payload_missing(1, CONF, batch) or "")
    assert payload_missing(3, CONF, batch) is None  # the witness itself
    assert payload_missing(4, CONF, batch) is None  # joining: its role is further on in this log
    assert payload_missing(1, CONF, batch[:1]) is None
