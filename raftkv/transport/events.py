"""What the transport tells whoever watches it (the node's metrics): sends that failed, per peer, and the
snapshot streams it sent and received. The transport only calls these; it never learns who listens, so
it imports nothing from the server."""

from __future__ import annotations

from typing import Protocol


class TransportEvents(Protocol):
    def send_failed(self, peer: int, messages: int, heartbeats: int) -> None:
        """A peer's stream broke, or its queue was full: `messages` were not sent, `heartbeats` of them
        heartbeats (a stream that broke with nothing queued counts as one failed message)."""

    def snapshot_sent(self, peer: int, ok: bool, seconds: float) -> None:
        """A snapshot stream to `peer` ended: installed there (`ok`) or failed, after `seconds`."""

    def snapshot_received(self, peer: int, ok: bool, seconds: float) -> None:
        """A snapshot stream from `peer` ended: handed over complete (`ok`) or failed, after `seconds`."""


class NoEvents:
    """Nobody listens (tools and tests that build a bare transport)."""

    def send_failed(self, peer: int, messages: int, heartbeats: int) -> None:
        pass

    def snapshot_sent(self, peer: int, ok: bool, seconds: float) -> None:
        pass

    def snapshot_received(self, peer: int, ok: bool, seconds: float) -> None:
        pass
