"""No input makes `kv` print a traceback: each bad argument, binary byte or nonsense number is one
`Error: ...` line on stderr and a documented non-zero exit (2 for usage, 1 for an error). Run as a user
runs it, as a process, against an address where nothing listens."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftkv.cli.kv import main

DEAD = "127.0.0.1:1"


def kv(*args: str | bytes, timeout: str = "0.5") -> subprocess.CompletedProcess[bytes]:
    cmd: list[str | bytes] = [sys.executable, "-m", "raftkv.cli.kv", "--endpoints", DEAD, "--command-timeout",
                              timeout, *args]
    return subprocess.run(cmd, capture_output=True, timeout=60, env=dict(os.environ))


def one_error_line(r: subprocess.CompletedProcess[bytes]) -> str:
    err = r.stderr.decode(errors="replace")
    assert "Traceback" not in err, err
    assert err.startswith("Error: ") and len(err.strip().splitlines()) == 1, err
    return err


USAGE = [
    ("--command-timeout", "0", "get", "k"),
    ("--command-timeout", "-1", "get", "k"),
    ("--command-timeout", "nan", "get", "k"),
    ("--command-timeout", "inf", "get", "k"),
    ("--command-timeout", "soon", "get", "k"),
    ("--dial-timeout", "0", "get", "k"),
    ("--dial-timeout", "-0.5", "put", "k", "v"),
    ("get", "k", "--dial-timeout", "0"),
    ("nosuchcommand",),
    ("range", "k", "--limit", "-1"),
    ("range", "k", "--limit", str(2 ** 70)),
    ("put", "k", "v", "--min-replicas", "-1"),
    ("put", "k", "v", "--timeout-ms", str(2 ** 40)),
    ("get", "k", "--consistency", "bounded_staleness", "--max-staleness-ms", "-5"),
    ("members", "add", "0", "127.0.0.1:9"),
    ("members", "remove", "-1"),
    ("leader", "transfer", str(2 ** 64)),
    ("lag", "--watch", "--interval", "nan"),
    ("--hex", "get", "zz"),
    ("--hex", "put", "6b", "abc"),
    ("--hex", "range", "6b", "6"),
    ("--hex", "txn", "--then", "put 6b xy"),
    ("txn", "--compare", "version(k) > x"),
    ("get", "k", "--consistency", "session", "--session-token", "!!!"),
    ("-w", "yaml", "get", "k"),
]


@pytest.mark.parametrize("args", USAGE, ids=lambda a: " ".join(a))
def test_bad_usage_is_one_line_and_exit_2(args: tuple[str, ...]) -> None:
    r = kv(*args)
    one_error_line(r)
    assert r.returncode == 2


def test_put_without_a_value_on_a_terminal_is_bad_usage() -> None:
    """Without VALUE, `kv put KEY` reads the value from stdin; from a terminal it says so instead of waiting."""
    import pty

    parent, child = pty.openpty()
    try:
        r = subprocess.run([sys.executable, "-m", "raftkv.cli.kv", "--endpoints", DEAD, "put", "k"], stdin=child,
                           capture_output=True, timeout=60, env=dict(os.environ))
    finally:
        os.close(child)
        os.close(parent)
    assert r.returncode == 2 and "standard input" in one_error_line(r)


def test_binary_and_odd_keys_reach_the_network_and_fail_in_one_line() -> None:
    """Bytes that are not UTF-8 (the shell passes them as they are) used to die in an encoder."""
    for args in ([b"get", b"\xff\xfe"], [b"put", b"k\xff", b"v\xc3"], [b"range", b"\x80", b"--prefix"],
                 [b"txn", b"--then", b"put \xff \xfe"], [b"--hex", b"get", b"ff00"]):
        r = kv(*args)
        err = one_error_line(r)
        assert r.returncode == 1 and DEAD in err, err


def test_help_and_version_style_exits_are_clean() -> None:
    r = kv("--help")
    assert r.returncode == 0 and b"--hex" in r.stdout and r.stderr == b""
    r = kv("put", "--help")
    assert r.returncode == 0 and b"KEY" in r.stdout


COMMANDS = [["get"], ["put"], ["range"], ["del"], ["txn"], ["lag"], ["members", "add"], ["members", "remove"],
            ["leader", "transfer"], ["--hex", "get"], ["--hex", "put"], ["--hex", "range"], ["--hex", "txn"], []]
WORDS = ["get", "put", "--hex", "--prefix", "--from-key", "--limit", "--after", "--keys-only", "--count-only", "--prev-kv",
         "--ack", "sync", "--consistency", "session", "--session-token", "--compare", "--then", "--else",
         "--min-replicas", "--timeout-ms", "--dial-timeout", "--command-timeout", "-w", "json", "table", "--",
         "0", "-1", "1e400", "nan", "k", "ff", "zz", "\udcff", "value(k) = 1", "put k v", "del k", ""]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(COMMANDS), st.lists(st.sampled_from(WORDS), min_size=0, max_size=6))
def test_no_sequence_of_arguments_raises(command: list[str], words: list[str]) -> None:
    """In-process, so many combinations are cheap: whatever the arguments, kv exits through SystemExit with
    a documented code (never an uncaught exception), and a failure is one `Error:` line on stderr."""
    r = CliRunner().invoke(main, ["--endpoints", DEAD, "--command-timeout", "0.05", "--dial-timeout", "0.05",
                                  *command, *words])
    args = command + words
    assert r.exception is None or isinstance(r.exception, SystemExit), (args, r.exception)
    assert "Traceback" not in r.output, (args, r.output)
    assert r.exit_code in (0, 1, 2, 3), (args, r.exit_code)
    if r.exit_code:
        assert r.stderr.startswith("Error: ") and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
