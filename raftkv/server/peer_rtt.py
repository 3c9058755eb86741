"""Round-trip time to each follower, as the leader sees it: from a heartbeat leaving to its response
(matched by the heartbeat's round number, its `context`) being taken in by the host loop. It therefore
includes both peers' queueing, which is what a slow link or a starved follower adds to every commit.

One heartbeat per peer is timed at a time; one that gets no answer within `GIVE_UP_S` (lost, or the
peer is down) is given up, so the next heartbeat is timed instead."""

from __future__ import annotations

from collections.abc import Callable

from ..core import Message

GIVE_UP_S = 5.0


class PeerRtt:
    def __init__(self, observe: Callable[[int, float], None]) -> None:
        self._observe = observe
        self._probes: dict[int, tuple[object, float]] = {}

    def sent(self, m: Message, now: float) -> None:
        """A heartbeat leaves (called for HEARTBEAT messages only)."""
        probe = self._probes.get(m.to)
        if probe is None or now - probe[1] > GIVE_UP_S:
            self._probes[m.to] = (m.context, now)

    def answered(self, m: Message, now: float) -> None:
        """A HEARTBEAT_RESP arrived; if it answers the timed heartbeat, that round trip is observed."""
        probe = self._probes.get(m.frm)
        if probe is not None and probe[0] == m.context:
            del self._probes[m.frm]
            self._observe(m.frm, now - probe[1])
