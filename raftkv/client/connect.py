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


def _closed_channel_poll(args: threading.ExceptHookArgs) -> bool:
    """Whether an uncaught thread exception is gRPC's connectivity poll meeting its channel closed."""
    if not isinstance(args.exc_value, ValueError) or "Channel closed!" not in str(args.exc_value):
        return False
    tb = args.exc_traceback
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "_poll_connectivity":
            return True
        tb = tb.tb_next
    return False


_quieted = False


def _quiet_closed_channel_polls() -> None:
    """gRPC's connectivity thread (behind `subscribe`) polls every 0.2 s without holding off a concurrent
    `close()`: when a channel closes between two of its polls, the thread dies with "Channel closed!" and
    Python prints that traceback on the application's stderr, although nothing went wrong (the channel was
    closed on purpose). Only that exception, from that gRPC function, is dropped; any other goes to the hook
    that was installed before."""
    global _quieted
    if _quieted:
        return
    _quieted = True
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if not _closed_channel_poll(args):
            previous(args)

    threading.excepthook = hook


class ChannelWatch:
    """The connectivity of one blocking channel, kept current by a subscription for the channel's life."""

    def __init__(self, channel: grpc.Channel) -> None:
        _quiet_closed_channel_polls()
        self.channel = channel
        self.state: grpc.ChannelConnectivity | None = None
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
        self.channel.unsubscribe(self._on_change)


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
