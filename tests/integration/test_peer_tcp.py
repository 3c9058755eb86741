"""Raft over TCP peer ports (`--peer-listen`, transport/tcp_peer.py) between real `raftkv serve` processes:
a cluster that commits, elects and survives a kill -9 with its peers on TCP; the TCP port refusing what
the gRPC Raft service refuses (test_peer_auth.py's forgeries, another cluster, an oversized frame); and
mTLS peers over TCP in a mixed cluster, where one member has no peer port (reached over gRPC).
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.ports import free_port
from raftkv.proto.stubs import raft_pb2 as pb

from .local_cluster import LocalCluster
from .test_peer_auth import _assert_untouched, _forged, _forged_append
from .tls_certs import PEER_CN, peer_pki, tls_cluster

HEADER = struct.Struct(">I")


def _established(port: int) -> int:
    """Established TCP connections on 127.0.0.1 whose local port is `port` (accepted by a listener there)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if state == "01" and int(local.split(":")[1], 16) == port:
            count += 1
    return count


def _wait_established(port: int, at_least: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while (n := _established(port)) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    return n


def _exchange(address: str, payload: bytes, context: ssl.SSLContext | None = None) -> tuple[str, str]:
    """Write `payload` (frames, or a bare length prefix) to a peer port and read its answer: the refusal
    frame's (code, reason), or ("", "") if it closed without one."""
    host, port = address.rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=5)
    sock = context.wrap_socket(raw, server_hostname=host) if context is not None else raw
    with sock:
        sock.settimeout(5)
        try:
            sock.sendall(payload)
        except OSError:
            pass  # refused before it read everything
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (ConnectionResetError, ssl.SSLError):
            pass
    if len(data) < HEADER.size:
        return "", ""
    (size,) = HEADER.unpack_from(data)
    code, _, reason = data[HEADER.size:HEADER.size + size].decode().partition("\n")
    return code, reason


def _kept_open(address: str, payload: bytes, seconds: float = 1.0) -> bool:
    """Write `payload` to a peer port: True if the port neither answered nor closed within `seconds`
    (the batch was taken)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(payload)
        sock.settimeout(seconds)
        try:
            sock.recv(65536)  # an answer (a refusal) or the end of the connection
            return False
        except TimeoutError:
            return True
        except ConnectionResetError:
            return False


def _frame(batch: pb.MessageBatch) -> bytes:
    payload = batch.SerializeToString()
    return HEADER.pack(len(payload)) + payload


def _cluster_id(cluster: LocalCluster) -> bytes:
    deadline = time.monotonic() + 20
    while not all(cluster.status(i).cluster_id for i in cluster.procs) and time.monotonic() < deadline:
        time.sleep(0.1)  # chosen by the first leader, learned by the others from its log
    return cluster.status(cluster.wait_leader()).cluster_id


@pytest.fixture(scope="module")
def tcp_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("tcp"), peer_port_nodes={1, 2, 3}).start_all()
    try:
        yield c
    finally:
        c.stop_all()


def test_forged_batches_on_the_peer_port_are_refused(tcp_cluster: LocalCluster) -> None:
    cluster = tcp_cluster
    cid = _cluster_id(cluster)
    leader = cluster.wait_leader()
    st = cluster.status(leader)
    terms = {i: cluster.status(i).term for i in cluster.procs}
    other = next(i for i in cluster.procs if i != leader)
    for i in cluster.procs:
        addr = cluster.peer_address(i)
        claimed = other if i != other else leader
        inc = cluster.status(claimed).incarnation
        assert _exchange(addr, _frame(_forged(cid, 99, i, st.term + 5)))[0] == "PERMISSION_DENIED"
        assert _exchange(addr, _frame(_forged_append(cid, 99, i, st.term + 5, st.last_index, st.commit))
                         )[0] == "PERMISSION_DENIED"
        # No cluster id: a member that has not learned it yet; its requests (this campaign) are dropped,
        # the connection stays.
        assert _kept_open(addr, _frame(_forged(b"", claimed, i, st.term + 5, incarnation=inc)))
        code, reason = _exchange(addr, _frame(_forged(b"\x01" * 16, claimed, i, st.term + 5, incarnation=inc)))
        assert code == "FAILED_PRECONDITION" and "another cluster" in reason, reason
        batch = _forged(cid, claimed, i, st.term + 5)
        setattr(batch.messages[0], "from", 99)
        assert _exchange(addr, _frame(batch))[0] == "PERMISSION_DENIED"
        # Bytes that are no MessageBatch.
        assert _exchange(addr, HEADER.pack(3) + b"\xff\xff\xff")[0] == "INVALID_ARGUMENT"
    _assert_untouched(cluster, terms)
    for i in cluster.procs:
        text = cluster.log_text(i)
        assert "refused a Raft stream" in text and "node 99 is not a member" in text, i
        assert "dropped requests from a member that has not learned the cluster id" in text, i


def test_an_oversized_frame_is_refused_before_it_is_read(tcp_cluster: LocalCluster) -> None:
    cluster = tcp_cluster
    terms = {i: cluster.status(i).term for i in cluster.procs}
    for i in cluster.procs:
        # A length prefix of 2 GiB and no body: refused at once (a node that waited to read it would
        # time this exchange out).
        code, reason = _exchange(cluster.peer_address(i), HEADER.pack(2 << 30))
        assert code == "RESOURCE_EXHAUSTED" and "over this node's limit" in reason, (code, reason)
    _assert_untouched(cluster, terms)


def _wait_count(port: int, want: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while (n := _established(port)) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    return n


def test_a_members_peer_port_is_changed_by_members_update_and_kept_by_other_updates(
        tcp_cluster: LocalCluster) -> None:
    """How a rolling change moves a member between gRPC and TCP: `kv members update --peer-addr`; an
    update of its marks alone keeps its peer port."""
    cluster = tcp_cluster
    cluster.wait_leader()
    assert _wait_count(cluster.peer_ports[2], 2) == 2
    with cluster.client() as c:
        c.member_update(2, semi_sync=True)
        assert {m.id: m.peer_address for m in c.members().members}[2] == cluster.peer_address(2)
        c.member_update(2, peer_address="")  # peers now reach node 2 over gRPC
        assert _wait_count(cluster.peer_ports[2], 0) == 0
        c.put("over", "grpc")
        bad = subprocess.run([sys.executable, "-m", "raftkv.cli.kv", "--endpoints", cluster.endpoints, "members",
                              "update", "2", "--peer-addr", "127.0.0.1:99999"], capture_output=True, text=True,
                             timeout=60)
        assert bad.returncode != 0 and bad.stderr.startswith("Error: ") and "peer address" in bad.stderr, bad.stderr
        c.member_update(2, semi_sync=False, peer_address=cluster.peer_address(2))
        assert _wait_count(cluster.peer_ports[2], 2) == 2
        c.put("over", "tcp")


def test_a_member_added_with_its_peer_port_is_sent_to_over_tcp(tcp_cluster: LocalCluster) -> None:
    """`kv members add ID ADDR --peer-addr HOST:PORT`, then `raftkv serve --join --peer-listen HOST:PORT`: the
    leader streams to the new member over its peer port."""
    cluster = tcp_cluster
    cluster.add_node(4)
    cluster.peer_ports[4] = free_port()
    added = subprocess.run([sys.executable, "-m", "raftkv.cli.kv", "--endpoints", cluster.endpoints, "members",
                            "add", "4", cluster.address(4), "--learner", "--peer-addr", cluster.peer_address(4)],
                           capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    cluster.start(4, join=True)
    try:
        with cluster.client() as c:
            c.put("for", "the-learner")
            assert {m.id: m.peer_address for m in c.members().members}[4] == cluster.peer_address(4)
        cluster.wait_applied(4, cluster.status(cluster.wait_leader()).commit)
        assert _wait_established(cluster.peer_ports[4], 1) >= 1  # the leader's sender
    finally:
        with cluster.client() as c:
            c.member_remove(4)
        cluster.procs[4].wait(20)  # a removed member exits (NEEDS_OPERATOR) after its grace
        for ports in (cluster.procs, cluster.ports, cluster.metrics_ports, cluster.peer_ports):
            ports.pop(4, None)


def test_peers_talk_over_their_tcp_ports_and_survive_a_leader_kill(tcp_cluster: LocalCluster) -> None:
    cluster = tcp_cluster
    leader = cluster.wait_leader()
    for i in cluster.procs:  # each node's port has accepted its two peers' connections
        assert _wait_established(cluster.peer_ports[i], 2) >= 2, i
    with cluster.client() as c:
        for k in range(20):
            c.put(f"before/{k}", str(k))
    cluster.kill(leader)
    rest = [i for i in cluster.procs if i != leader]
    new = cluster.wait_leader(rest)
    assert new != leader
    with cluster.client() as c:
        c.put("after", "kill")
        assert c.get("before/19").kv.value == b"19"
    cluster.start(leader)  # back, and caught up through its peer port
    st = cluster.status(new)
    cluster.wait_applied(leader, st.commit)
    with cluster.client() as c:
        assert c.get("after").kv.value == b"kill"


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    return peer_pki(tmp_path, elsewhere=True)


def test_mtls_peers_over_tcp_beside_a_grpc_only_member(tmp_path: Path, pki: dict[str, str]) -> None:
    """Nodes 1 and 2 have peer ports, node 3 none: everyone sends to 1 and 2 over TLS TCP connections and
    to 3 over gRPC, and the three elect and commit together (also with node 3 leading). The peer port
    speaks TLS with the gRPC port's certificate and demands a peer certificate (CN raftkv-peer): a
    client certificate is refused, and so is a peer's that does not name the claimed member's host; no
    certificate fails TLS."""
    with tls_cluster(tmp_path, pki, "--client-cert-auth", "--peer-trusted-ca-file", pki["ca"],
                     "--peer-client-cert-auth", "--peer-cert-allowed-cn", PEER_CN,
                     peer_port_nodes={1, 2}) as cluster:
        leader = cluster.wait_leader()
        with cluster.client() as c:
            c.put("tls", "over-tcp")
            index = cluster.status(leader).commit
            members = {m.id: m.peer_address for m in c.members().members}
        assert members == {1: cluster.peer_address(1), 2: cluster.peer_address(2), 3: ""}
        for i in cluster.procs:
            cluster.wait_applied(i, index)
        for i in (1, 2):  # the two others' senders
            assert _wait_established(cluster.peer_ports[i], 2) >= 2, i
        with cluster.client() as c:
            c.transfer_leader(3)
        leader = cluster.wait_leader()
        assert leader == 3
        with cluster.client() as c:
            c.put("led-by", "3")
            assert c.get("tls").kv.value == b"over-tcp"
        st = cluster.status(leader)
        terms = {i: cluster.status(i).term for i in cluster.procs}
        client_ctx = ssl.create_default_context(cafile=pki["ca"])
        client_ctx.load_cert_chain(pki["client_cert"], pki["client_key"])
        no_cert = ssl.create_default_context(cafile=pki["ca"])
        elsewhere = ssl.create_default_context(cafile=pki["ca"])
        elsewhere.load_cert_chain(pki["elsewhere_cert"], pki["elsewhere_key"])
        plain = _frame(_forged(st.cluster_id, 99, 1, st.term + 5))
        for i in (1, 2):
            addr = cluster.peer_address(i)
            code, reason = _exchange(addr, _frame(_forged(st.cluster_id, 99, i, st.term + 5)), client_ctx)
            assert code == "PERMISSION_DENIED" and f"CN must be {PEER_CN}" in reason, (code, reason)
            assert _exchange(addr, _frame(_forged_append(st.cluster_id, leader, i, st.term, st.last_index,
                                                         st.commit)), client_ctx)[0] == "PERMISSION_DENIED"
            # A peer's certificate, but not for the host of the member it claims to be.
            code, reason = _exchange(addr, _frame(_forged(st.cluster_id, leader, i, st.term + 5)), elsewhere)
            assert code == "PERMISSION_DENIED" and "does not name 127.0.0.1" in reason, (code, reason)
            # No certificate: the port asks for one, so TLS fails (at the handshake, or at the first read
            # in TLS 1.3) before any frame is read; plaintext on the TLS port gets no further.
            for ctx in (no_cert, None):
                try:
                    answer = _exchange(addr, plain, ctx)
                except (ssl.SSLError, OSError):
                    answer = ("", "")
                assert answer == ("", ""), answer
        _assert_untouched(cluster, terms)


class _MisconfiguredFounder(LocalCluster):
    """Node 1 is given a wrong peer port for node 2 in its --initial-peer-addresses (nobody listens there);
    the other founders are given the right one."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, peer_port_nodes={1, 2, 3})
        self.wrong = f"127.0.0.1:{free_port()}"

    def command(self, i: int, join: bool = False) -> list[str]:
        cmd = super().command(i, join)
        if i == 1:
            at = cmd.index("--initial-peer-addresses") + 1
            cmd[at] = cmd[at].replace(f"2={self.peer_address(2)}", f"2={self.wrong}")
        return cmd


def test_a_founder_given_another_peer_port_for_a_member_says_so(tmp_path: Path) -> None:
    """Founders given different --initial-peer-addresses: node 1 sends to node 2's wrong port and never
    reaches it there. Node 2's own batches say which peer port it listens on, so node 1 names the mismatch
    and the fix in its log, instead of leaving a one-way partition nobody sees."""
    cluster = _MisconfiguredFounder(tmp_path)
    try:
        # Nodes 1 and 2 alone (not start_all): with node 1 leading, node 2 never hears a leader, and with
        # a third node leading, node 2 would send nothing to node 1. Alone, node 2 sends to node 1 either
        # way: its appends as leader, its campaign as a follower that hears no one.
        for i in (1, 2):
            cluster.start(i)
        event = "a member listens for peers elsewhere than this node sends to it: it cannot reach it there"

        def said(i: int) -> list[dict[str, object]]:
            return [e for ln in cluster.log_text(i).splitlines() if ln.startswith("{")
                    and (e := json.loads(ln)).get("event") == event]

        deadline = time.monotonic() + 20
        while not said(1) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert said(1), cluster.log_text(1)[-3000:]
        e = said(1)[0]
        assert (e["peer"], e["listens"], e["sends_to"]) == (2, cluster.peer_address(2), cluster.wrong), e
        assert e["fix"] == f"kv members update 2 --peer-addr {cluster.peer_address(2)}"
        assert len(said(1)) == 1  # once, not per batch
        assert said(2) == []  # its record agrees with where node 1 listens
    finally:
        cluster.stop_all()
