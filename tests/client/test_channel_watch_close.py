"""Closing clients must not print tracebacks: gRPC's connectivity thread (behind the client's channel
watch) dies with "Channel closed!" when a channel closes between two of its polls, and Python used to print
that on the application's stderr. A real process opens and closes channels the way the client does, to a
port where nothing listens, and its stderr stays empty; another thread's real error is still printed."""

from __future__ import annotations

import subprocess
import sys

from benchmarks.ports import free_port

SCRIPT = """
import sys, threading, time
import grpc
from raftkv.client.connect import ChannelWatch
for _ in range(10):
    channel = grpc.insecure_channel("127.0.0.1:%d")
    watch = ChannelWatch(channel)
    watch.state = grpc.ChannelConnectivity.IDLE  # as after a failed connection's back-off
    watch.wait(0.001)  # asks the idle channel to connect
    watch.close()
    channel.close()
time.sleep(0.6)  # gRPC's connectivity thread polls every 0.2 s
if len(sys.argv) > 1:
    t = threading.Thread(target=lambda: 1 / 0)
    t.start(); t.join()
"""


def run(*args: str) -> str:
    r = subprocess.run([sys.executable, "-c", SCRIPT % free_port(), *args], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stderr


def test_closing_channels_the_client_watched_prints_nothing() -> None:
    assert run() == ""


def test_other_thread_errors_are_still_printed() -> None:
    err = run("raise")
    assert "ZeroDivisionError" in err and "Channel closed" not in err
