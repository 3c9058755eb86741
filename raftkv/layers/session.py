"""Session tokens: read-your-writes and monotonic reads without server-side session state.

A token names a point in the log (term, index). Any node whose applied index has reached `index` has
everything the token's holder has seen, so it may answer the holder's next read. Tokens are a minimum, not
a snapshot: the answer may be newer. A checksum bound to the cluster id makes a token from another cluster,
or a mangled one, fail loudly instead of silently waiting.
"""

from __future__ import annotations

import base64
import struct
import zlib
from dataclasses import dataclass, field

_VERSION = 2
"""2: `term` is the term of the entry at `index`, so it is checked against the log. Version 1 tokens
carried the node's current term for reads; they are still accepted, without the term check."""
_VERSIONS = (1, 2)
_LAYOUT = struct.Struct(">BQQI")


class InvalidToken(ValueError):
    """The token is malformed, or belongs to another cluster."""


class TokenAhead(Exception):
    """The token names an index beyond the leader's log (OUT_OF_RANGE): no wait would ever reach it."""


class TokenLost(Exception):
    """The log holds another term at the token's index (FAILED_PRECONDITION): the write it names was lost,
    as a leader-acknowledged write can be."""


@dataclass(slots=True, frozen=True, order=True)
class SessionToken:
    index: int
    term: int
    term_checked: bool = field(default=True, compare=False)
    """False for a version 1 token, whose term may not be its entry's."""

    def encode(self, cluster_id: bytes) -> bytes:
        crc = zlib.crc32(cluster_id + struct.pack(">QQ", self.term, self.index))
        return _LAYOUT.pack(_VERSION, self.term, self.index, crc)

    def check_ahead(self, last_index: int) -> None:
        """On the leader: a token past its last index names nothing this cluster has (or will have)."""
        if self.index > last_index:
            raise TokenAhead(f"session token names index {self.index} (term {self.term}), beyond the leader's "
                             f"last log index {last_index}: the write it names was lost (as an ack=leader write "
                             "can be); start the session again from a fresh read")

    def check_term(self, log_term: int | None, newest_compacted_term: int = 0) -> None:
        """Once the token's index is committed here: `log_term` is the log's term there (None when that
        entry is compacted away; then only a token term above the compaction point's proves a loss)."""
        if not self.term_checked or self.term == 0:  # 0: the issuing node could not read the term
            return
        if log_term is None:
            if self.term <= newest_compacted_term:
                return
            log_term = newest_compacted_term
            where = f"at most term {log_term}"
        else:
            where = f"term {log_term}"
        if log_term != self.term:
            raise TokenLost(f"session token names index {self.index} at term {self.term}, but the committed log "
                            f"holds {where} there: the write it names was lost (as an ack=leader write can be); "
                            "start the session again from a fresh read")

    @staticmethod
    def decode(data: bytes, cluster_id: bytes) -> SessionToken:
        if len(data) != _LAYOUT.size:
            raise InvalidToken(f"session token must be {_LAYOUT.size} bytes, got {len(data)}")
        version, term, index, crc = _LAYOUT.unpack(data)
        if version not in _VERSIONS:
            raise InvalidToken(f"unknown session token version {version}")
        if zlib.crc32(cluster_id + struct.pack(">QQ", term, index)) != crc:
            raise InvalidToken("session token does not belong to this cluster (or is corrupted)")
        return SessionToken(index=index, term=term, term_checked=version >= 2)

    @staticmethod
    def peek(data: bytes) -> SessionToken | None:
        """Read a token's position without checking its cluster (clients only compare their own tokens)."""
        if len(data) != _LAYOUT.size:
            return None
        version, term, index, _ = _LAYOUT.unpack(data)
        return SessionToken(index=index, term=term) if version in _VERSIONS else None

    def text(self, cluster_id: bytes) -> str:
        """Printable form for the CLI."""
        return base64.urlsafe_b64encode(self.encode(cluster_id)).decode().rstrip("=")

    @staticmethod
    def from_text(text: str, cluster_id: bytes) -> SessionToken:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (ValueError, TypeError) as e:
            raise InvalidToken(f"session token is not valid base64: {e}") from None
        return SessionToken.decode(raw, cluster_id)


def newest(a: SessionToken | None, b: SessionToken | None) -> SessionToken | None:
    """A client keeps the newest point it has seen, so its reads never go backwards."""
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)
