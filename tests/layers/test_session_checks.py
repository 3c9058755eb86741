"""Session tokens checked against the log: ahead of it, or naming another term (a lost write)."""

from __future__ import annotations

import struct
import zlib

import pytest

from raftkv.layers.session import SessionToken, TokenAhead, TokenLost

CID = b"c" * 16


def test_a_token_beyond_the_last_index_is_refused() -> None:
    SessionToken(10, 2).check_ahead(10)
    with pytest.raises(TokenAhead, match="index 11.*last log index 10"):
        SessionToken(11, 2).check_ahead(10)


def test_a_term_mismatch_names_a_lost_write() -> None:
    SessionToken(10, 2).check_term(2)
    with pytest.raises(TokenLost, match="term 3.*holds term 2"):
        SessionToken(10, 3).check_term(2)
    # Compacted away: only a term above the compaction point's proves the loss.
    SessionToken(10, 2).check_term(None, 4)
    with pytest.raises(TokenLost, match="at most term 4"):
        SessionToken(10, 5).check_term(None, 4)


def test_version_1_tokens_are_still_read_but_not_term_checked() -> None:
    term, index = 9, 10
    v1 = struct.pack(">BQQI", 1, term, index, zlib.crc32(CID + struct.pack(">QQ", term, index)))
    tok = SessionToken.decode(v1, CID)
    assert (tok.index, tok.term, tok.term_checked) == (10, 9, False)
    tok.check_term(2)  # a v1 read token carried the node's term, not its entry's: no false alarm
    v2 = SessionToken.decode(SessionToken(10, 9).encode(CID), CID)
    assert v2.term_checked and v2 == tok
