"""Closing a client must not make gRPC's connectivity thread print a traceback: when the client had asked an
idle channel to connect (a node that was down) and closed it before gRPC's poll took the request up, that
thread used to fail on the closed channel ("Cannot invoke RPC: Channel closed!") and print it to stderr of
the application."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from benchmarks.ports import free_port
from raftkv.client.connect import ChannelWatch


@pytest.fixture
def thread_errors() -> Iterator[list[BaseException]]:
    errors: list[BaseException] = []
    before = threading.excepthook
    threading.excepthook = lambda a: errors.append(a.exc_value)  # type: ignore[assignment]
    try:
        yield errors
    finally:
        threading.excepthook = before


def test_closing_right_after_asking_an_idle_channel_to_connect_is_quiet(thread_errors: list[BaseException]) -> None:
    port = free_port()  # nothing listens there: the channel never becomes ready
    for _ in range(10):
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        watch = ChannelWatch(channel)
        watch.state = grpc.ChannelConnectivity.IDLE  # as after a failed connection's back-off
        watch.wait(0.001)  # asks the idle channel to connect (and gives up at once)
        watch.close()
        channel.close()
    time.sleep(0.6)  # gRPC's connectivity thread polls every 0.2 s
    assert thread_errors == []
