"""The README's TLS promises on real processes: `--cert-file/--key-file` make the gRPC port TLS-only,
`--trusted-ca-file` verifies peers (a node whose certificate another CA signed gets no data), and without
`--client-cert-auth` clients need only the CA; with it, a client certificate signed by another CA is
refused like none at all."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from raftkv.client import Client, RaftKVError
from raftkv.tls import TlsFiles

from .local_cluster import LocalCluster


def _write(tmp: Path, name: str, ca: trustme.CA, *identities: str) -> dict[str, str]:
    """A CA's certificate, and a certificate + key it signed for `identities`."""
    leaf = ca.issue_cert(*identities)
    files = {"ca": tmp / f"{name}-ca.pem", "cert": tmp / f"{name}.pem", "key": tmp / f"{name}.key"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    leaf.cert_chain_pems[0].write_to_path(str(files["cert"]))
    leaf.private_key_pem.write_to_path(str(files["key"]))
    return {k: str(v) for k, v in files.items()}


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, dict[str, str]]:
    ours, theirs = trustme.CA(), trustme.CA()
    return {"node": _write(tmp_path, "node", ours, "127.0.0.1", "localhost"),
            "client": _write(tmp_path, "client", ours, "kv-client@example.invalid"),
            "foreign_node": _write(tmp_path, "foreign-node", theirs, "127.0.0.1", "localhost"),
            "foreign_client": _write(tmp_path, "foreign-client", theirs, "kv-client@example.invalid")}


def _node_flags(files: dict[str, str], trusted_ca: str) -> list[str]:
    return ["--cert-file", files["cert"], "--key-file", files["key"], "--trusted-ca-file", trusted_ca]


def _per_node(cluster: LocalCluster, flags: Callable[[int], list[str]]) -> None:
    """Give each node its own TLS flags (LocalCluster's `extra` is the same for all)."""
    base = cluster.command
    cluster.command = lambda i, join=False: base(i, join) + flags(i)  # type: ignore[method-assign]


def test_tls_without_client_certificates_and_a_peer_from_another_ca(tmp_path: Path,
                                                                    pki: dict[str, dict[str, str]]) -> None:
    ca = pki["node"]["ca"]
    # Node 3's certificate was signed by another CA (it trusts ours): nodes 1 and 2 refuse it as a peer.
    cluster = LocalCluster(tmp_path, tls=TlsFiles(ca))
    _per_node(cluster, lambda i: _node_flags(pki["foreign_node" if i == 3 else "node"], ca))
    for i in (1, 2, 3):
        cluster.start(i)
    try:
        leader = cluster.wait_leader(among=[1, 2], timeout=30)
        assert leader in (1, 2)
        # No client certificate needed: the CA alone verifies the server.
        with Client(cluster.address(leader), timeout=10, tls=TlsFiles(ca)) as c:
            r = c.put("k", "v")
            assert c.get("k").kv.value == b"v" and sorted(r.meta.confirmed_by) == [1, 2]
        # A plaintext client, and one that trusts only another CA, are refused.
        with Client(cluster.address(leader), timeout=2) as plain, pytest.raises(RaftKVError):
            plain.status(endpoint=cluster.address(leader), timeout=2)
        theirs = TlsFiles(pki["foreign_node"]["ca"])
        with Client(cluster.address(leader), timeout=2, tls=theirs) as c, pytest.raises(RaftKVError):
            c.status(endpoint=cluster.address(leader), timeout=2)
        # Node 3 never got the data: nothing reached it from a peer that verifies its certificate.
        with Client(cluster.address(3), timeout=5, tls=theirs) as c:
            st = c.status(endpoint=cluster.address(3))
            assert st.leader_id == 0 and st.applied < r.meta.index
            got = c.get("k", consistency="serializable", endpoint=cluster.address(3))
            assert not got.found
    finally:
        cluster.stop_all()


def test_client_certificate_from_another_ca_is_refused(tmp_path: Path, pki: dict[str, dict[str, str]]) -> None:
    ca = pki["node"]["ca"]
    cluster = LocalCluster(tmp_path, extra=[*_node_flags(pki["node"], ca), "--client-cert-auth"],
                           tls=TlsFiles(ca, pki["client"]["cert"], pki["client"]["key"]))
    cluster.start_all()
    try:
        ep = cluster.address(1)
        foreign = TlsFiles(ca, pki["foreign_client"]["cert"], pki["foreign_client"]["key"])
        with Client(ep, timeout=2, tls=foreign) as c, pytest.raises(RaftKVError):
            c.status(endpoint=ep, timeout=2)
        with Client(ep, timeout=2, tls=TlsFiles(ca)) as c, pytest.raises(RaftKVError):
            c.status(endpoint=ep, timeout=2)
        with cluster.client() as c:
            assert c.put("k", "v").meta.index > 0 and c.status(endpoint=ep).id == 1
    finally:
        cluster.stop_all()
