"""Certificates written to files and TLS clusters started from them, for the tests that need them
(test_tls.py, test_cli_failures.py, test_peer_auth.py). Each test file still says which certificates
it issues and which flags its nodes get; this holds only what they did alike."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trustme

from raftkv.tls import TlsFiles

from .local_cluster import LocalCluster


def write_pair(cert: trustme.LeafCert, path: Path, name: str) -> tuple[str, str]:
    """`name`.pem (the certificate) and `name`.key under `path`; their paths."""
    c, k = path / f"{name}.pem", path / f"{name}.key"
    cert.cert_chain_pems[0].write_to_path(str(c))
    cert.private_key_pem.write_to_path(str(k))
    return str(c), str(k)


def write_ca(ca: trustme.CA, path: Path, name: str = "ca") -> str:
    """The CA's certificate as `name`.pem under `path`; its path."""
    f = path / f"{name}.pem"
    ca.cert_pem.write_to_path(str(f))
    return str(f)


PEER_CN = "raftkv-peer"
"""The common name the peer-auth tests allow for peer certificates."""


def peer_pki(path: Path, elsewhere: bool = False) -> dict[str, str]:
    """A CA, the nodes' certificate (CN PEER_CN, for 127.0.0.1 and localhost), a client certificate from the
    same CA (not a peer's: wrong CN), and with `elsewhere` a peer's CN issued for another host."""
    ca = trustme.CA()
    files = {"ca": write_ca(ca, path)}
    files["node_cert"], files["node_key"] = write_pair(
        ca.issue_cert("127.0.0.1", "localhost", common_name=PEER_CN), path, "node")
    files["client_cert"], files["client_key"] = write_pair(
        ca.issue_cert("127.0.0.1", common_name="kv-client"), path, "client")
    if elsewhere:
        files["elsewhere_cert"], files["elsewhere_key"] = write_pair(
            ca.issue_cert("client.example.invalid", common_name=PEER_CN), path, "elsewhere")
    return files


def node_tls_flags(pki: dict[str, str]) -> list[str]:
    """The nodes' certificate and the CA they trust (keys `node_cert`, `node_key`, `ca` of `pki`)."""
    return ["--cert-file", pki["node_cert"], "--key-file", pki["node_key"], "--trusted-ca-file", pki["ca"]]


@contextmanager
def tls_cluster(root: Path, pki: dict[str, str], *flags: str, peer_port_nodes: set[int] | None = None
                ) -> Iterator[LocalCluster]:
    """A running 3-node cluster on `pki`'s node certificate plus `flags`; its own clients present the
    client certificate (keys `client_cert`, `client_key`). `peer_port_nodes` get TCP peer ports (see
    LocalCluster). Stopped on leaving."""
    c = LocalCluster(root, extra=[*node_tls_flags(pki), *flags],
                     tls=TlsFiles(pki["ca"], pki["client_cert"], pki["client_key"]), peer_port_nodes=peer_port_nodes)
    try:
        c.start_all()
        yield c
    finally:
        c.stop_all()
