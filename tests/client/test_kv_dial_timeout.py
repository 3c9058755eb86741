"""`--dial-timeout` bounds how long `kv` waits for a connection: an endpoint that never connects (a port
that accepts TCP but never answers the HTTP/2 handshake, as a paused node; or a port nobody listens on)
fails the command once every endpoint has had its dial timeout, not after the whole --command-timeout."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

COMMAND_TIMEOUT = "60"
"""Far longer than the subprocess may run: a kv that waited for it would be killed and the test fail."""


@pytest.fixture(scope="module")
def mute_port() -> Iterator[int]:
    """A port that accepts connections and never says a word."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(s.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield s.getsockname()[1]
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        s.close()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _kv(endpoints: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "raftkv.cli.kv", "--endpoints", endpoints, "--dial-timeout", "0.5",
           "--command-timeout", COMMAND_TIMEOUT, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize("args", [("get", "k"), ("put", "k", "v"), ("members", "list")])
def test_a_mute_endpoint_fails_after_the_dial_timeout(mute_port: int, args: tuple[str, ...]) -> None:
    r = _kv(f"127.0.0.1:{mute_port}", *args)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("Error: ") and "did not connect within" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_refused_endpoint_fails_after_the_dial_timeout() -> None:
    r = _kv(f"127.0.0.1:{_closed_port()}", "get", "k")
    assert r.returncode == 1 and r.stderr.startswith("Error: ")
    assert "connect" in r.stderr.lower() and len(r.stderr.strip().splitlines()) == 1


def test_every_endpoint_gets_its_dial_timeout(mute_port: int) -> None:
    r = _kv(f"127.0.0.1:{mute_port},127.0.0.1:{_closed_port()}", "get", "k")
    assert r.returncode == 1 and r.stderr.startswith("Error: ")
