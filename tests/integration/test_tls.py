"""A cluster that speaks only TLS: peers find each other through it, clients need the CA, and with
client-certificate authentication a client without a certificate is turned away."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from raftkv.client import Client, RaftKVError
from raftkv.tls import TlsFiles

from .local_cluster import LocalCluster


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("kv-client@example.invalid")
    other_ca = trustme.CA()
    files = {"ca": tmp_path / "ca.pem", "node_cert": tmp_path / "node.pem", "node_key": tmp_path / "node.key",
             "client_cert": tmp_path / "client.pem", "client_key": tmp_path / "client.key",
             "other_ca": tmp_path / "other-ca.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.cert_chain_pems[0].write_to_path(str(files["node_cert"]))
    server.private_key_pem.write_to_path(str(files["node_key"]))
    client.cert_chain_pems[0].write_to_path(str(files["client_cert"]))
    client.private_key_pem.write_to_path(str(files["client_key"]))
    other_ca.cert_pem.write_to_path(str(files["other_ca"]))
    return {k: str(v) for k, v in files.items()}


@pytest.fixture
def tls_cluster(tmp_path: Path, pki: dict[str, str]) -> Iterator[LocalCluster]:
    flags = ["--cert-file", pki["node_cert"], "--key-file", pki["node_key"], "--trusted-ca-file", pki["ca"],
             "--client-cert-auth"]
    c = LocalCluster(tmp_path, extra=flags, tls=TlsFiles(pki["ca"], pki["client_cert"], pki["client_key"]))
    c.start_all()
    try:
        yield c
    finally:
        c.stop_all()


def kv(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "raftkv.cli.kv", "--endpoints", cluster.endpoints, "--command-timeout", "5", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=dict(os.environ))


def test_tls_cluster_replicates_and_serves_kv(tls_cluster: LocalCluster, pki: dict[str, str]) -> None:
    tls = ["--cacert", pki["ca"], "--cert", pki["client_cert"], "--key", pki["client_key"]]
    r = kv(tls_cluster, "put", "secret", "s3cr3t", *tls)
    assert r.returncode == 0, r.stderr
    # Every node holds it: the peers replicated it to each other over TLS.
    for i in tls_cluster.procs:
        r = kv(tls_cluster, "get", "secret", "--consistency", "serializable", "--endpoints", tls_cluster.address(i),
               *tls)
        assert r.stdout == "secret\ns3cr3t\n", (i, r.stderr)


def test_clients_without_the_right_credentials_are_refused(tls_cluster: LocalCluster, pki: dict[str, str]) -> None:
    ep = tls_cluster.address(1)
    with Client(ep, timeout=2) as plain, pytest.raises(RaftKVError):
        plain.status(endpoint=ep, timeout=2)
    no_cert = TlsFiles(pki["ca"])
    with Client(ep, timeout=2, tls=no_cert) as c, pytest.raises(RaftKVError):
        c.status(endpoint=ep, timeout=2)
    wrong_ca = TlsFiles(pki["other_ca"], pki["client_cert"], pki["client_key"])
    with Client(ep, timeout=2, tls=wrong_ca) as c, pytest.raises(RaftKVError):
        c.status(endpoint=ep, timeout=2)
    with Client(ep, timeout=5, tls=tls_cluster.tls) as c:
        assert c.status(endpoint=ep).id == 1


def test_bad_tls_settings_are_one_line_errors(tmp_path: Path, pki: dict[str, str]) -> None:
    r = subprocess.run([sys.executable, "-m", "raftkv.cli.server_main", "serve", "--id", "1", "--data-dir",
                        str(tmp_path / "n1"), "--cert-file", pki["node_cert"]], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and r.stderr.startswith("Error: ") and "key" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "raftkv.cli.kv", "--endpoints", "127.0.0.1:1", "--cacert",
                        str(tmp_path / "missing.pem"), "get", "x"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("Error: cannot read CA certificate")
    assert len(r.stderr.strip().splitlines()) == 1
