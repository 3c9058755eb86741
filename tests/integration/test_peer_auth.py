"""Only members speak Raft: forged peer traffic against real `raftkv serve` clusters, TLS and plaintext.

A forger tries what was shown to work before: heartbeats from an unknown node at term+5 (which froze
writes) and an append that writes a key (which linearizable reads then returned). Every node must refuse
the stream with the status that says why, log it, keep its term, and never apply the forged entry.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import trustme

from raftkv import exit_codes
from raftkv.core import EntryType, MessageType
from raftkv.proto.stubs import raft_pb2 as pb
from raftkv.proto.stubs import raft_pb2_grpc as pb_grpc
from raftkv.storage import commands
from raftkv.tls import TlsFiles

from .local_cluster import LocalCluster
from .tls_certs import PEER_CN, peer_pki, tls_cluster, write_pair


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    # The client certificate is from the same CA, even naming the nodes' host: not a peer's (wrong CN).
    return peer_pki(tmp_path)


def _forged(cluster_id: bytes, sender: int, to: int, term: int, entries: list[pb.Entry] | None = None,
            mtype: MessageType = MessageType.HEARTBEAT, commit: int = 0, index: int = 0,
            log_term: int = 0, incarnation: bytes = b"") -> pb.MessageBatch:
    m = pb.RaftMessage(type=int(mtype), to=to, **{"from": sender}, term=term, commit=commit, index=index,
                       log_term=log_term, entries=entries or [])
    return pb.MessageBatch(cluster_id=cluster_id, **{"from": sender}, messages=[m], from_address="127.0.0.1:1",
                           incarnation=incarnation)


def _send(address: str, batch: pb.MessageBatch, tls: TlsFiles | None) -> grpc.StatusCode:
    """Stream one batch to a node's Raft service; the status it answers with."""
    if tls is None:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(address, tls.channel_credentials())
    try:
        pb_grpc.RaftStub(channel).Send(iter([batch]), timeout=5)
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()  # type: ignore[no-any-return]
    finally:
        channel.close()


def _send_snapshot_head(address: str, head: pb.MessageBatch) -> grpc.RpcError | None:
    """Open an InstallSnapshot stream with `head` and one piece; the error it ends with (None: accepted)."""
    channel = grpc.insecure_channel(address)
    try:
        pb_grpc.RaftStub(channel).InstallSnapshot(iter([pb.SnapshotChunk(head=head), pb.SnapshotChunk(data=b"x")]),
                                                 timeout=5)
        return None
    except grpc.RpcError as e:
        return e
    finally:
        channel.close()


def _forged_append(cluster_id: bytes, sender: int, to: int, term: int, last: int, commit: int) -> pb.MessageBatch:
    put = commands.encode(commands.Put(b"forged", b"by-a-stranger"))
    entry = pb.Entry(term=term, index=last + 1, type=int(EntryType.NORMAL), data=put)
    return _forged(cluster_id, sender, to, term, [entry], MessageType.APP, commit=commit + 1, index=last,
                   log_term=term)


def _assert_untouched(cluster: LocalCluster, terms: dict[int, int]) -> None:
    time.sleep(1.0)  # several heartbeats: a forged leader would have shown by now
    for i in cluster.procs:
        st = cluster.status(i)
        assert st.term == terms[i], (i, st.term, terms[i])
        assert st.leader_id in cluster.procs, (i, st.leader_id)
    with cluster.client() as c:
        assert c.get("forged").kv.value == b""  # linearizable: the forged append was never applied
        c.put("still", "writable")


@pytest.fixture
def peer_tls_cluster(tmp_path: Path, pki: dict[str, str]) -> Iterator[LocalCluster]:
    with tls_cluster(tmp_path, pki, "--client-cert-auth", "--peer-trusted-ca-file", pki["ca"],
                     "--peer-client-cert-auth", "--peer-cert-allowed-cn", PEER_CN) as c:
        yield c


def test_forged_peers_are_refused_on_a_tls_cluster(peer_tls_cluster: LocalCluster, pki: dict[str, str]) -> None:
    cluster = peer_tls_cluster
    leader = cluster.wait_leader()
    st = cluster.status(leader)
    cid, term = st.cluster_id, st.term
    terms = {i: cluster.status(i).term for i in cluster.procs}
    client_cert = TlsFiles(pki["ca"], pki["client_cert"], pki["client_key"])
    no_cert = TlsFiles(pki["ca"])
    for i in cluster.procs:
        addr = cluster.address(i)
        # A valid client certificate is not a peer's: refused whoever it claims to be.
        assert _send(addr, _forged(cid, 99, i, term + 5), client_cert) == grpc.StatusCode.PERMISSION_DENIED
        assert _send(addr, _forged_append(cid, leader, i, term, st.last_index, st.commit),
                     client_cert) == grpc.StatusCode.PERMISSION_DENIED
        # No certificate at all: the port asks every connection for one, so TLS itself fails.
        assert _send(addr, _forged(cid, 99, i, term + 5), no_cert) in (grpc.StatusCode.UNAVAILABLE,
                                                                       grpc.StatusCode.UNAUTHENTICATED)
    _assert_untouched(cluster, terms)
    for i in cluster.procs:
        text = cluster.log_text(i)
        assert "refused a Raft stream" in text and "CN must be raftkv-peer" in text, i


def test_member_certificate_must_name_the_members_host(tmp_path: Path) -> None:
    """With only --client-cert-auth, a certificate from the cluster's CA may speak Raft only for a member
    whose address host it names."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    node_cert, node_key = write_pair(ca.issue_cert("127.0.0.1", "localhost"), tmp_path, "node")
    elsewhere = write_pair(ca.issue_cert("client.example.invalid"), tmp_path, "client")
    flags = ["--cert-file", node_cert, "--key-file", node_key, "--trusted-ca-file", str(tmp_path / "ca.pem"),
             "--client-cert-auth"]
    tls = TlsFiles(str(tmp_path / "ca.pem"), *elsewhere)
    (tmp_path / "c").mkdir()
    cluster = LocalCluster(tmp_path / "c", extra=flags, tls=tls).start_all()
    try:
        leader = cluster.wait_leader()
        st = cluster.status(leader)
        terms = {i: cluster.status(i).term for i in cluster.procs}
        for i in cluster.procs:
            assert _send(cluster.address(i), _forged(st.cluster_id, leader, i, st.term + 5),
                         tls) == grpc.StatusCode.PERMISSION_DENIED
        _assert_untouched(cluster, terms)
        # The leader itself refuses a batch claiming to come from it for that reason; every other node
        # refuses it for the certificate's host.
        for i in cluster.procs:
            if i != leader:
                assert "does not name 127.0.0.1" in cluster.log_text(i), i
    finally:
        cluster.stop_all()


def test_forged_peers_are_refused_on_a_plaintext_cluster(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    deadline = time.monotonic() + 20
    while not all(cluster.status(i).cluster_id for i in cluster.procs) and time.monotonic() < deadline:
        time.sleep(0.1)  # chosen by the first leader, learned by the others from its log
    st = cluster.status(leader)
    cid, term = st.cluster_id, st.term
    assert cid
    terms = {i: cluster.status(i).term for i in cluster.procs}
    other = next(i for i in cluster.procs if i != leader)
    for i in cluster.procs:
        addr = cluster.address(i)
        claimed = other if i != other else leader
        # An unknown sender, at term+5 and with an append.
        assert _send(addr, _forged(cid, 99, i, term + 5), None) == grpc.StatusCode.PERMISSION_DENIED
        assert _send(addr, _forged_append(cid, 99, i, term + 5, st.last_index, st.commit),
                     None) == grpc.StatusCode.PERMISSION_DENIED
        # A member's id (and its incarnation, which a forger on a plaintext network can see), but no
        # cluster id: taken for a member that has not learned the id yet, whose requests (this campaign)
        # are dropped and only answers delivered. Or another cluster's id: refused.
        inc = cluster.status(claimed).incarnation
        assert _send(addr, _forged(b"", claimed, i, term + 5, incarnation=inc), None) == grpc.StatusCode.OK
        assert _send(addr, _forged(b"\x01" * 16, claimed, i, term + 5, incarnation=inc), None) == \
            grpc.StatusCode.FAILED_PRECONDITION
        # A snapshot stream is a request alone: without a cluster id it is refused whole.
        head = _forged(b"", claimed, i, term + 5, mtype=MessageType.SNAP, incarnation=inc)
        head.messages[0].snapshot.CopyFrom(pb.Snapshot(index=st.last_index + 100, term=term + 5))
        err = _send_snapshot_head(addr, head)
        assert err is not None and err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
        assert "carries no cluster id" in err.details(), err.details()
        # Messages inside a batch from another sender than the batch's.
        batch = _forged(cid, claimed, i, term + 5)
        setattr(batch.messages[0], "from", 99)
        assert _send(addr, batch, None) == grpc.StatusCode.PERMISSION_DENIED
    _assert_untouched(cluster, terms)
    for i in cluster.procs:
        text = cluster.log_text(i)
        assert "node 99 is not a member" in text, i
        assert "dropped requests from a member that has not learned the cluster id" in text, i


def test_expired_or_not_yet_valid_certificate_refuses_to_start(tmp_path: Path) -> None:
    ca = trustme.CA()
    now = datetime.datetime.now(datetime.UTC)
    cases = {
        "expired": ca.issue_cert("127.0.0.1", not_before=now - datetime.timedelta(days=30),
                                 not_after=now - datetime.timedelta(days=1)),
        "future": ca.issue_cert("127.0.0.1", not_before=now + datetime.timedelta(days=1),
                                not_after=now + datetime.timedelta(days=30)),
    }
    for name, cert in cases.items():
        cert_file, key_file = write_pair(cert, tmp_path, name)
        r = subprocess.run([sys.executable, "-m", "raftkv.cli.server_main", "serve", "--id", "1", "--data-dir",
                            str(tmp_path / f"data-{name}"), "--listen", "127.0.0.1:1", "--cert-file", cert_file,
                            "--key-file", key_file], capture_output=True, text=True, timeout=60)
        assert r.returncode == exit_codes.USAGE, (name, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and cert_file in lines[0], lines
        assert "valid from" in lines[0] and ("expired" in lines[0] if name == "expired" else "not valid yet" in lines[0])


def test_certificate_expiring_soon_is_a_warning(tmp_path: Path) -> None:
    ca = trustme.CA()
    now = datetime.datetime.now(datetime.UTC)
    cert_file, key_file = write_pair(ca.issue_cert("127.0.0.1", not_after=now + datetime.timedelta(days=2)),
                                     tmp_path, "soon")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cluster = LocalCluster(tmp_path, n=1, extra=["--cert-file", cert_file, "--key-file", key_file],
                           tls=TlsFiles(str(tmp_path / "ca.pem")))
    cluster.start_all()
    try:
        text = cluster.log_text(1)
        assert "certificate expires soon" in text and cert_file in text
    finally:
        cluster.stop_all()
