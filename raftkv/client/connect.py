"""Waiting for a channel to be connected before a request goes on it.

gRPC reports a channel READY only after the server has answered the HTTP/2 handshake, so a node that
is paused or wedged (its port still accepts TCP connections) never makes its channel ready. A request
issued only on a ready channel was therefore certainly not sent when the wait times out: the client
may send it elsewhere, even a write. The fast path (already READY) costs no waiting and no thread.
"""

from __future__ import annotations

import asyncio
import threading
import time

import grpc

READY = grpc.ChannelConnectivity.READY
FAILED = grpc.ChannelConnectivity.TRANSIENT_FAILURE
SHUTDOWN = grpc.ChannelConnectivity.SHUTDOWN
SETTLED = (READY, FAILED, SHUTDOWN)
"""States in which a request may go: READY sends it; in TRANSIENT_FAILURE (or SHUTDOWN) the call fails
at once with gRPC's own account of why it could not connect (never sent)."""


class ChannelWatch:
    """The connectivity of one blocking channel, kept current by a subscription for the channel's life."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.state: grpc.ChannelConnectivity | None = None
        self._kicked = False
        self._cond = threading.Condition()
        channel.subscribe(self._on_change, try_to_connect=True)

    def _on_change(self, state: grpc.ChannelConnectivity) -> None:
        with self._cond:
            self.state = state
            self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        """True once the channel is settled (a request may go on it); False if it is still connecting
        after `timeout` seconds (nothing may have been sent)."""
        with self._cond:
            if self.state in SETTLED:
                return True
            if self.state == grpc.ChannelConnectivity.IDLE:
                # An idle channel connects only when asked; subscribing again asks (gRPC's public way).
                self._kicked = True
                self.channel.subscribe(self._kick, try_to_connect=True)
            end = time.monotonic() + timeout
            while self.state not in SETTLED:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _kick(self, state: grpc.ChannelConnectivity) -> None:
        self.channel.unsubscribe(self._kick)
        self._on_change(state)

    def close(self) -> None:
        """Stop watching; call before closing the channel. gRPC's connectivity thread polls every 0.2 s: a
        connection attempt asked for (`_kick`) and not yet taken up when the channel closes makes that
        thread fail on the closed channel and print a traceback. So wait, at most a poll or two, until it
        has taken the request up; nothing is waited for in the usual case (no attempt pending)."""
        self.channel.unsubscribe(self._on_change)
        with self._cond:
            kicked = self._kicked
        state = getattr(self.channel, "_connectivity_state", None)  # grpc internals; absent: nothing to wait
        if not kicked or state is None:
            return
        end = time.monotonic() + 0.5
        while getattr(state, "try_to_connect", False) and time.monotonic() < end:
            time.sleep(0.01)


async def wait_settled(channel: grpc.aio.Channel, timeout: float) -> bool:
    """As `ChannelWatch.wait`, for an asyncio channel."""
    end = time.monotonic() + timeout
    while True:
        state = channel.get_state(try_to_connect=True)
        if state in SETTLED:
            return True
        left = end - time.monotonic()
        if left <= 0:
            return False
        try:
            await asyncio.wait_for(channel.wait_for_state_change(state), left)
        except TimeoutError:
            return channel.get_state() in SETTLED
