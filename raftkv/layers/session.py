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
from dataclasses import dataclass

_VERSION = 1
_LAYOUT = struct.Struct(">BQQI")


class InvalidToken(ValueError):
    """The token is malformed, or belongs to another cluster."""


@dataclass(slots=True, frozen=True, order=True)
class SessionToken:
    index: int
    term: int

    def encode(self, cluster_id: bytes) -> bytes:
        crc = zlib.crc32(cluster_id + struct.pack(">QQ", self.term, self.index))
        return _LAYOUT.pack(_VERSION, self.term, self.index, crc)

    @staticmethod
    def decode(data: bytes, cluster_id: bytes) -> SessionToken:
        if len(data) != _LAYOUT.size:
            raise InvalidToken(f"session token must be {_LAYOUT.size} bytes, got {len(data)}")
        version, term, index, crc = _LAYOUT.unpack(data)
        if version != _VERSION:
            raise InvalidToken(f"unknown session token version {version}")
        if zlib.crc32(cluster_id + struct.pack(">QQ", term, index)) != crc:
            raise InvalidToken("session token does not belong to this cluster (or is corrupted)")
        return SessionToken(index=index, term=term)

    @staticmethod
    def peek(data: bytes) -> SessionToken | None:
        """Read a token's position without checking its cluster (clients only compare their own tokens)."""
        if len(data) != _LAYOUT.size:
            return None
        version, term, index, _ = _LAYOUT.unpack(data)
        return SessionToken(index=index, term=term) if version == _VERSION else None

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
