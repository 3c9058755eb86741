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

from . import tls_certs
from .local_cluster import LocalCluster
from .tls_certs import write_ca, write_pair


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    path = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    files = {"ca": write_ca(ca, path), "other_ca": write_ca(trustme.CA(), path, "other-ca")}
    files["node_cert"], files["node_key"] = write_pair(ca.issue_cert("127.0.0.1", "localhost"), path, "node")
    files["client_cert"], files["client_key"] = write_pair(ca.issue_cert("kv-client@example.invalid"), path,
                                                           "client")
    return files


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, str]) -> Iterator[LocalCluster]:
    """One cluster for the module: its tests write a key and are refused, neither changes what the other checks."""
    with tls_certs.tls_cluster(tmp_path_factory.mktemp("tls-cluster"), pki, "--client-cert-auth") as c:
        yield c


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
