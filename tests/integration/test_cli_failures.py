"""`kv` and the Python client when something is wrong, on real processes: binary keys, an unknown write
outcome, a hung first endpoint, TLS set up wrong in each of the usual ways, an unreachable follower in
`kv lag`, and a range that has more keys than it shows."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from raftkv.client import AsyncClient, Client, DeadlineError, OutcomeUnknownError, TlsHandshakeError
from raftkv.tls import TlsFiles

from .local_cluster import LocalCluster
from .tls_certs import tls_cluster, write_ca, write_pair

EXIT_ERROR, EXIT_USAGE, EXIT_OUTCOME_UNKNOWN = 1, 2, 3


def kv(endpoints: str, *args: str | bytes, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    cmd: list[str | bytes] = [sys.executable, "-m", "raftkv.cli.kv", "--endpoints", endpoints, "--command-timeout",
                              str(timeout), *args]
    r = subprocess.run(cmd, capture_output=True, timeout=120, env=dict(os.environ))
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(errors="replace"),
                                       r.stderr.decode(errors="replace"))


def one_error(r: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("Error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr.strip()


# -- binary keys and --hex ----------------------------------------------------------------------------

def test_binary_keys_as_bytes_and_as_hex(cluster: LocalCluster) -> None:
    eps = cluster.endpoints
    r = kv(eps, b"put", b"bin\xff", b"\xfe")  # not UTF-8: the shell passes the bytes as they are
    assert r.returncode == 0, r.stderr
    r = kv(eps, "--hex", "get", "62696eff")  # the same key, given as hex
    assert r.returncode == 0 and r.stdout == "62696eff\nfe\n", r.stderr
    r = kv(eps, "put", "--hex", "00ff10", "0001")  # global flag after the command, NUL bytes included
    assert r.returncode == 0, r.stderr
    with Client(eps) as c:
        assert c.get(b"\x00\xff\x10").kv.value == b"\x00\x01"
    r = kv(eps, "--hex", "range", "00", "01")  # [00, 01): keys and range end in hex
    assert r.stdout == "00ff10\n0001\n"
    r = kv(eps, "--hex", "range", "00", "--prefix", "--keys-only")
    assert r.stdout == "00ff10\n"
    r = kv(eps, "--hex", "txn", "--compare", "value(00ff10) = 0001", "--then", "put 00ff10 02", "--then",
           "get 62696eff")
    assert r.returncode == 0 and r.stdout.splitlines() == ["SUCCESS", "OK", "62696eff", "fe"], r.stdout
    r = kv(eps, "--hex", "del", "00ff10", "--prev-kv")
    assert r.stdout.splitlines() == ["1", "00ff10", "02"]
    r = kv(eps, "-w", "table", "--hex", "get", "62696eff")
    assert "| 62696eff" in r.stdout
    r = kv(eps, "--hex", "get", "6")
    assert r.returncode == EXIT_USAGE and "hex" in one_error(r)


# -- writes whose outcome is unknown ----------------------------------------------------------------

def test_a_write_cut_off_by_the_deadline_reports_an_unknown_outcome(cluster: LocalCluster) -> None:
    """A `sync` write waits for every voter; with one paused it commits on the majority but is not answered
    before the client's deadline. The client cannot know whether it was applied (here it was), so kv and
    the client say the outcome is unknown, never a bare "Deadline Exceeded"."""
    leader = cluster.wait_leader()
    paused = next(i for i in (1, 2, 3) if i != leader)
    at_leader = cluster.address(leader)
    assert kv(at_leader, "put", "warm", "1").returncode == 0
    cluster.signal(paused, signal.SIGSTOP)
    try:
        r = kv(at_leader, "put", "unknown", "1", "--ack", "sync", "--timeout-ms", "20000", timeout=1.0)
        err = one_error(r)
        assert r.returncode == EXIT_OUTCOME_UNKNOWN, err
        assert err.startswith("Error: outcome unknown: the write may or may not have been applied (")
        assert at_leader in err and "deadline exceeded after 1.0 s" in err, err
        assert kv(at_leader, "get", "unknown").stdout == "unknown\n1\n"  # this time it was applied
        r = kv(at_leader, "txn", "--then", "put unknown 2", "--ack", "sync", "--timeout-ms", "20000", timeout=1.0)
        assert r.returncode == EXIT_OUTCOME_UNKNOWN and "outcome unknown" in one_error(r)
        with Client(at_leader, timeout=1.0) as c, pytest.raises(OutcomeUnknownError) as info:
            c.put("unknown", "3", ack="sync", timeout_ms=20000)
        assert isinstance(info.value, DeadlineError)  # what callers caught before still catches it
        assert info.value.address == at_leader
        # A read has no outcome to be unsure of: pinned to the paused node it simply fails.
        r = kv(cluster.address(paused), "get", "unknown", "--dial-timeout", "0.3", timeout=1.0)
        assert r.returncode == EXIT_ERROR and "outcome unknown" not in one_error(r)
    finally:
        cluster.signal(paused, signal.SIGCONT)


def test_a_one_millisecond_deadline_never_claims_a_plain_deadline(cluster: LocalCluster) -> None:
    """Either the write never left (it is not applied, and kv says so) or it did (the outcome is unknown)."""
    for n in range(5):
        r = kv(cluster.endpoints, "put", f"ms{n}", "1", timeout=0.001)
        err = one_error(r)
        assert r.returncode in (EXIT_ERROR, EXIT_OUTCOME_UNKNOWN), err
        if r.returncode == EXIT_ERROR:
            assert "not applied" in err, err
        else:
            assert "outcome unknown" in err, err


# -- a hung endpoint first in the list --------------------------------------------------------------

@pytest.mark.parametrize("hang", ["follower", "leader"])
def test_a_hung_first_endpoint_does_not_fail_writes(cluster: LocalCluster, hang: str) -> None:
    """A paused node's port still accepts TCP connections, but no gRPC connection ever becomes ready: a
    request that never left cannot have been applied, so the client moves on to the next node."""
    leader = cluster.wait_leader()
    hung = leader if hang == "leader" else next(i for i in (1, 2, 3) if i != leader)
    rest = [i for i in (1, 2, 3) if i != hung]
    eps = ",".join(cluster.address(i) for i in [hung, *rest])
    cluster.signal(hung, signal.SIGSTOP)
    try:
        if hang == "leader":
            cluster.wait_leader(among=rest)
        r = kv(eps, "put", "h", "1", "--dial-timeout", "1", timeout=8)
        assert r.returncode == 0 and r.stdout.startswith("OK (index "), r.stderr
        r = kv(eps, "txn", "--compare", "value(h) = 1", "--then", "put h 2", "--dial-timeout", "1", timeout=8)
        assert r.returncode == 0 and r.stdout.startswith("SUCCESS"), r.stderr
        r = kv(eps, "get", "h", "--dial-timeout", "1", timeout=8)
        assert r.returncode == 0 and r.stdout == "h\n2\n", r.stderr
        r = kv(eps, "members", "list", "--dial-timeout", "1", timeout=8)
        assert r.returncode == 0 and len(r.stdout.splitlines()) == 3, r.stderr
        with Client(eps, timeout=8, connect_timeout=1) as c:
            assert c.put("h", "3").meta.index > 0

        async def async_put(batching: bool) -> int:
            async with AsyncClient(eps, timeout=8, connect_timeout=1, batching=batching) as ac:
                return (await ac.put("h", "5")).meta.index

        assert asyncio.run(async_put(False)) > 0 and asyncio.run(async_put(True)) > 0
        # Only the hung node in the list: the message names it and says the write was not sent.
        r = kv(cluster.address(hung), "put", "h", "4", "--dial-timeout", "0.5", timeout=1.5)
        err = one_error(r)
        assert r.returncode == EXIT_ERROR and cluster.address(hung) in err and "not sent" in err, err
    finally:
        cluster.signal(hung, signal.SIGCONT)


# -- TLS set up wrong ---------------------------------------------------------------------------------

@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    ca, other_ca = trustme.CA(), trustme.CA()
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    certs = {"node": ca.issue_cert("127.0.0.1", "localhost"), "client": ca.issue_cert("kv-client"),
             "expired_client": ca.issue_cert("kv-client", not_before=past,
                                             not_after=past + datetime.timedelta(days=1)),
             "foreign_client": other_ca.issue_cert("kv-client")}
    files = {"ca": write_ca(ca, tmp_path), "other_ca": write_ca(other_ca, tmp_path, "other-ca")}
    for name, cert in certs.items():
        files[f"{name}_cert"], files[f"{name}_key"] = write_pair(cert, tmp_path, name)
    return files


@pytest.fixture
def mtls_cluster(tmp_path: Path, pki: dict[str, str]) -> Iterator[LocalCluster]:
    with tls_cluster(tmp_path, pki, "--client-cert-auth") as c:
        yield c


def tls_failure(endpoints: str, *flags: str) -> str:
    """Run a put that must fail on TLS; it fails at once (retrying cannot fix it), in one line."""
    started = time.monotonic()
    r = kv(endpoints, *flags, "put", "k", "v", timeout=30)
    assert time.monotonic() - started < 20, "kv retried a TLS failure until its deadline"
    assert r.returncode == EXIT_ERROR
    return one_error(r)


def test_each_tls_mistake_is_named(mtls_cluster: LocalCluster, pki: dict[str, str]) -> None:
    eps = mtls_cluster.endpoints
    ok = ["--cacert", pki["ca"], "--cert", pki["client_cert"], "--key", pki["client_key"]]
    assert kv(eps, *ok, "put", "k", "v").returncode == 0

    err = tls_failure(eps, "--cacert", pki["ca"])
    assert "requires a client certificate" in err and "--cert" in err, err
    err = tls_failure(eps, "--cacert", pki["other_ca"], "--cert", pki["client_cert"], "--key", pki["client_key"])
    assert "not trusted" in err and "unable to get local issuer certificate" in err and "--cacert" in err, err
    err = tls_failure(eps, "--cacert", pki["ca"], "--cert", pki["expired_client_cert"], "--key",
                      pki["expired_client_key"])
    assert "client certificate" in err and "expired" in err and "2020-01-02" in err, err
    err = tls_failure(eps, "--cacert", pki["ca"], "--cert", pki["foreign_client_cert"], "--key",
                      pki["foreign_client_key"])
    assert "refused the client certificate" in err and "signed by a CA the cluster trusts" in err, err
    err = tls_failure(eps)
    assert "speaks TLS" in err and "--cacert" in err, err
    with Client(eps, timeout=30) as plain, pytest.raises(TlsHandshakeError) as info:
        plain.put("k", "v")
    assert "speaks TLS" in str(info.value) and info.value.reason == "TLS"


def test_tls_client_against_a_plaintext_cluster(cluster: LocalCluster, pki: dict[str, str]) -> None:
    err = tls_failure(cluster.endpoints, "--cacert", pki["ca"])
    assert "does not speak TLS" in err and "--cacert" in err, err


def test_a_node_certificate_that_expired_while_serving(tmp_path: Path) -> None:
    """Certificates expire on running nodes: the client names the expiry instead of a closed socket."""
    ca = trustme.CA()
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=6)
    node = ca.issue_cert("127.0.0.1", not_after=soon)
    for name, blob in (("ca.pem", ca.cert_pem), ("node.pem", node.cert_chain_pems[0]),
                       ("node.key", node.private_key_pem)):
        blob.write_to_path(str(tmp_path / name))
    c = LocalCluster(tmp_path, n=1, extra=["--cert-file", str(tmp_path / "node.pem"), "--key-file",
                                            str(tmp_path / "node.key")], tls=TlsFiles(str(tmp_path / "ca.pem")))
    c.start_all()
    try:
        time.sleep(max(0.0, (soon - datetime.datetime.now(datetime.UTC)).total_seconds()) + 1.5)
        err = tls_failure(c.endpoints, "--cacert", str(tmp_path / "ca.pem"))
        assert "certificate has expired" in err and c.address(1) in err, err
    finally:
        c.stop_all()


# -- kv lag: an unreachable follower ------------------------------------------------------------------

def test_lag_shows_an_unreachable_follower(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, extra=["--lag-critical-seconds", "1.0"]).start_all()
    try:
        leader = cluster.wait_leader()
        gone = next(i for i in (1, 2, 3) if i != leader)
        at_leader = cluster.address(leader)
        assert kv(at_leader, "put", "x", "1").returncode == 0
        r = kv(at_leader, "lag")
        assert r.returncode == 0 and "UNREACHABLE" not in r.stdout and "CRITICAL" not in r.stdout
        cluster.kill(gone)  # no writes follow: its lag in entries stays 0, only silence gives it away
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            doc = json.loads(kv(at_leader, "-w", "json", "lag").stdout)
            row = next(f for f in doc["followers"] if int(f["id"]) == gone)
            if row.get("unreachable"):
                break
            time.sleep(0.3)
        assert row.get("unreachable") and row.get("critical"), row
        line = next(ln for ln in kv(at_leader, "lag").stdout.splitlines() if ln.startswith(f"| {gone} "))
        assert "UNREACHABLE" in line, line
        r = kv(at_leader, "status")
        row = next(ln for ln in r.stdout.splitlines() if ", leader, " in ln)
        assert f"{gone}:0e/0.00s!unreachable" in row, r.stdout
    finally:
        cluster.stop_all()


# -- kv range: more keys than it shows ----------------------------------------------------------------

def test_range_says_when_there_are_more_keys_and_pages_on(cluster: LocalCluster) -> None:
    eps = cluster.endpoints
    for k in ("p/a", "p/b", "p/c", "q/a"):
        assert kv(eps, "put", k, "1").returncode == 0
    r = kv(eps, "range", "p/", "--prefix", "--keys-only", "--limit", "2")
    assert r.returncode == 0 and r.stdout.split() == ["p/a", "p/b"]
    assert r.stderr.strip() == "(more keys: 2 of 3 shown; continue with --after p/b)", r.stderr
    r = kv(eps, "range", "p/", "--prefix", "--keys-only", "--limit", "2", "--after", "p/b")
    assert r.returncode == 0 and r.stdout.split() == ["p/c"] and r.stderr == ""
    r = kv(eps, "--hex", "range", "702f", "--prefix", "--keys-only", "--limit", "1")
    assert r.stdout.split() == ["702f61"] and "--after 702f61" in r.stderr
    r = kv(eps, "-w", "json", "range", "p/", "--prefix", "--limit", "1")
    assert json.loads(r.stdout)["more"] is True
    r = kv(eps, "range", "--from-key", "p/b", "--keys-only", "--limit", "10")
    assert r.stdout.split() == ["p/b", "p/c", "q/a"] and r.stderr == ""
