"""Dropping a leadership-transfer request (TimeoutNow) that reaches its target long after it was sent.

A leader hands its leadership over by sending the target a TimeoutNow, and abandons the transfer if the
target has not taken over within an election timeout. A target that was paused (SIGSTOP, a stalled VM)
finds the message in its socket when it resumes, maybe many seconds later, and would campaign at once:
a pointless election, and a forced one, which voters grant despite hearing from a live leader.

The target cannot tell from its own clock alone that the message is old: it arrives "now". It can if the
sender dates it. The leader's host stamps every heartbeat, append and TimeoutNow with its monotonic send
time (in the envelope field `stamp`, opaque to the core). Two machines' monotonic clocks differ by an
unknown offset, but the target learns `offset + fastest delivery` as the smallest `arrival - stamp` over
that leader's heartbeats and appends of the term (allowed to creep upwards at 100 ppm of the leader's
elapsed time, for rate drift between the clocks). A TimeoutNow whose `arrival - stamp` exceeds that by
more than an election timeout sat somewhere -- a socket buffer, a paused process -- for longer than the
leader waited for it; the host drops it instead of stepping it into the core, and logs that it did.

Messages from one leader come over one stream, in order, so the heartbeats that a paused target finds
queued behind an old TimeoutNow are taken into account only after it was judged. A TimeoutNow from a
leader whose messages the target has never timed (none yet, or an unstamped one) is passed on as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core import Message, MessageType
from ..transport.envelope import stamp_of

DATED = frozenset({MessageType.HEARTBEAT, MessageType.APP, MessageType.TIMEOUT_NOW})
"""What a leader's host stamps with its send time."""
DRIFT_RATE = 1e-4


@dataclass(slots=True)
class _Offset:
    least_ns: int  # smallest arrival - stamp seen (our clock minus theirs, plus the fastest delivery)
    last_stamp: int


class TransferGuard:
    def __init__(self, max_delay_s: float) -> None:
        self.max_delay_ns = int(max_delay_s * 1e9)
        self._offsets: dict[tuple[int, int], _Offset] = {}  # (leader id, term) -> offset
        self.dropped = 0

    def check(self, m: Message, now_ns: int) -> float | None:
        """Observe `m`, arriving at `now_ns`. For a TimeoutNow that came too late, return by how much
        longer than the fastest delivery it took, in seconds (the caller drops it); otherwise None."""
        stamp = stamp_of(m)
        if stamp <= 0 or m.type not in DATED:
            return None
        key = (m.frm, m.term)
        took = now_ns - stamp
        off = self._offsets.get(key)
        if m.type == MessageType.TIMEOUT_NOW:
            if off is None:
                return None
            late = took - off.least_ns
            if late > self.max_delay_ns:
                self.dropped += 1
                return late / 1e9
            return None
        if off is None:
            if len(self._offsets) > 64:  # old terms and members are never asked about again
                self._offsets.clear()
            self._offsets[key] = _Offset(took, stamp)
            return None
        allowance = int(DRIFT_RATE * max(0, stamp - off.last_stamp))
        off.least_ns = min(took, off.least_ns + allowance)
        off.last_stamp = max(off.last_stamp, stamp)
        return None
