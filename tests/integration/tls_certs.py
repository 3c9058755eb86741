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
