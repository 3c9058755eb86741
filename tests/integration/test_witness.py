"""Witness members with real `raftkv serve` processes: a 2-data + 1-witness cluster keeps taking majority
writes after either data node is killed -9 and loses none; a witness that holds the only copy of
acknowledged writes (beside a dead node) brings the other data node up to date and hands it the
leadership; a healthy cluster's witness stores no value byte; a witness serves no client; and a
`--witness` flag that disagrees with the configuration refuses to start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from raftkv import exit_codes
from raftkv.client import Client, RaftKVError
from raftkv.proto.etcd_stubs import rpc_pb2, rpc_pb2_grpc
from raftkv.proto.stubs import kv_pb2, kv_pb2_grpc

from .local_cluster import LocalCluster

W = 3


class WitnessCluster(LocalCluster):
    """Nodes 1 and 2 hold the data; node 3 is the witness (every founder is told so: --witnesses 3)."""

    def __init__(self, root: Path, extra: list[str] | None = None) -> None:
        super().__init__(root, 3, ["--witnesses", str(W), *(extra or [])])

    def command(self, i: int, join: bool = False) -> list[str]:
        return super().command(i, join) + (["--witness"] if i == W else [])

    def data_leader(self, timeout: float = 30.0) -> int:
        """Wait until a data node leads (a witness leads only to hand over)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [i for i, p in self.procs.items() if p.poll() is None and i != W]
            for i in live:
                try:
                    st = self.status(i)
                except RaftKVError:
                    continue
                if st.role == "leader":
                    return i
            time.sleep(0.05)
        raise AssertionError(f"no data node leads within {timeout}s; logs in {self.root}")


def put_all(c: Client, prefix: str, n: int) -> dict[str, bytes]:
    acked = {}
    for i in range(n):
        key, value = f"{prefix}-{i}", f"{prefix}-value-{i}".encode()
        c.put(key, value)
        acked[key] = value
    return acked


def assert_readable(c: Client, acked: dict[str, bytes]) -> None:
    for key, value in acked.items():
        got = c.get(key)
        assert got.found and got.kv.value == value, key


def test_two_plus_one_keeps_writing_after_either_data_node_is_killed(tmp_path: Path) -> None:
    # Small snapshots: a witness killed for a while comes back behind the leader's compacted log.
    cl = WitnessCluster(tmp_path, ["--snapshot-entries", "20", "--snapshot-keep-entries", "5"]).start_all()
    try:
        acked: dict[str, bytes] = {}
        with cl.client() as c:
            acked |= put_all(c, "healthy", 5)
        for victim in (cl.data_leader(), 3 - cl.data_leader()):
            cl.kill(victim)
            survivor = 3 - victim
            assert cl.data_leader() == survivor
            with Client(f"{cl.address(survivor)},{cl.address(W)}") as c:
                acked |= put_all(c, f"without-{victim}", 10)
            cl.start(victim)
            with cl.client() as c:
                last = c.put(f"back-{victim}", "x").meta.index
            cl.wait_applied(victim, last)
        # The witness, killed while the data nodes write and compact, gets a snapshot without data.
        cl.kill(W)
        with Client(f"{cl.address(1)},{cl.address(2)}") as c:
            acked |= put_all(c, "without-witness", 30)
            last = c.put("witness-back", "x").meta.index
        cl.start(W)
        cl.wait_applied(W, last)
        assert '"installed snapshot"' in cl.log_text(W)
        with cl.client() as c:
            assert_readable(c, acked)
        for i in (1, 2):  # each data node holds every acknowledged value itself
            with Client(cl.address(i)) as c:
                for key, value in acked.items():
                    got = c.get(key, consistency="serializable", endpoint=cl.address(i))
                    assert got.found and got.kv.value == value, (i, key)
    finally:
        cl.stop_all()


def test_witness_brings_the_paused_data_node_up_to_date_and_hands_it_the_leadership(tmp_path: Path) -> None:
    cl = WitnessCluster(tmp_path).start_all()
    try:
        a = cl.data_leader()
        b = 3 - a
        cl.signal(b, signal.SIGSTOP)
        try:
            with Client(f"{cl.address(a)},{cl.address(W)}") as c:
                acked = put_all(c, "only-on-a-and-witness", 8)
            cl.kill(a)
        finally:
            cl.signal(b, signal.SIGCONT)
        # B lacks the acknowledged writes; only the witness has them (with their payload).
        assert cl.data_leader(timeout=30) == b
        led = [json.loads(line) for line in cl.log_text(W).splitlines() if line.startswith("{")]
        assert any(e.get("event") == "leader changed" and e.get("role") == "leader" for e in led), \
            "B lacked the writes: only the witness could be elected, and it handed over"
        with Client(cl.address(b)) as c:
            assert_readable(c, acked)
            c.put("after-handover", "ok")
    finally:
        cl.signal(b, signal.SIGCONT)
        cl.stop_all()


def test_healthy_witness_stores_no_value_byte(tmp_path: Path) -> None:
    # A long payload delay: the property is the healthy path's, not a race with a slow commit.
    cl = WitnessCluster(tmp_path, ["--witness-payload-after-ms", "5000"]).start_all()
    canary = b"CANARY-5f3a9c-VALUE"
    try:
        with cl.client() as c:
            for i in range(20):
                last = c.put(f"k{i}", canary + b"-%d" % i).meta.index
        for i in (1, 2, W):
            cl.wait_applied(i, last)
    finally:
        cl.stop_all()

    def holds_canary(node: int) -> bool:
        for path in (tmp_path / f"node{node}").rglob("*"):
            if path.is_file() and canary in path.read_bytes():
                return True
        return False

    assert holds_canary(1) and holds_canary(2)  # the test would see the bytes if they were there
    assert not holds_canary(W)

    # Its data nodes' directories, stopped now, show the refusal of a --witness that the log contradicts
    # (the flags agree with each other: node 1 a witness beside data node 2; the log says otherwise).
    r = subprocess.run([*cl.command(1), "--witnesses", f"1,{W}", "--witness"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == exit_codes.USAGE, r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert "node 1 is started with --witness, but its configuration makes it a data member" in r.stderr


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> WitnessCluster:
    cl = WitnessCluster(tmp_path_factory.mktemp("witness")).start_all()
    yield cl
    cl.stop_all()


def test_witness_refuses_reads_and_writes_naming_the_leader(healthy: WitnessCluster) -> None:
    leader = healthy.data_leader()
    with Client(healthy.endpoints) as c:
        c.put("k", "v")
    want = f"node {W} is a witness: it holds no data; ask the leader, node {leader} at {healthy.address(leader)}"
    with grpc.insecure_channel(healthy.address(W)) as ch:
        kv = kv_pb2_grpc.KVStub(ch)
        for call, req in ((kv.Put, kv_pb2.PutRequest(key=b"k", value=b"x")),
                          (kv.Get, kv_pb2.GetRequest(key=b"k", read=kv_pb2.ReadOptions(consistency=kv_pb2.SERIALIZABLE)))):
            with pytest.raises(grpc.RpcError) as e:
                call(req, timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert e.value.details() == want
            assert dict(e.value.trailing_metadata())["raftkv-leader"] == healthy.address(leader)
        with pytest.raises(grpc.RpcError) as e:
            rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"k", serializable=True), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and e.value.details() == want
        create = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"k"))
        with pytest.raises(grpc.RpcError) as e:  # a stream too
            next(iter(rpc_pb2_grpc.WatchStub(ch).Watch(iter([create]), timeout=5)))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and e.value.details() == want
        status = kv_pb2_grpc.AdminStub(ch).Status(kv_pb2.StatusRequest(), timeout=5)  # still served
        assert status.id == W and status.leader_id == leader
        assert [m.id for m in status.members if m.witness] == [W]
    with Client(healthy.address(W)) as c:  # a client given only the witness follows it to the leader
        assert c.get("k").kv.value == b"v"


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "raftkv.cli.server_main", "serve", *args],
                          capture_output=True, text=True, timeout=30, env={**os.environ})


def test_witness_flag_that_disagrees_with_the_configuration_refuses_to_start(tmp_path: Path) -> None:
    peers = "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3"
    cases = [
        (["--id", "3", "--witness", "--peers", peers], "node 3 is started with --witness, but --witnesses"),
        (["--id", "3", "--witnesses", "3", "--peers", peers], "--witnesses names node 3: start it with --witness"),
        (["--id", "1", "--witnesses", "1,2", "--peers", "1=127.0.0.1:1,2=127.0.0.1:2"],
         "--witnesses names every member"),
    ]
    for args, want in cases:
        r = _serve(tmp_path, "--data-dir", str(tmp_path / "d"), *args)
        assert r.returncode == exit_codes.USAGE, r.stderr
        assert r.stderr.strip().count("\n") == 0 and want in r.stderr, r.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.slow  # ~17 s of process starts: `make test-long`
def test_witness_added_with_kv_members_add_counts_for_writes(tmp_path: Path) -> None:
    """`kv members add --witness`, then `raftkv serve --join --witness`: it catches up without payloads
    (no byte of a value written before it joined) and its vote commits writes while a data node is down."""
    from .test_cli import kv

    cl = LocalCluster(tmp_path, 2).start_all()
    try:
        with cl.client() as c:
            c.put("before", "witness-free")
        cl.add_node(W)
        r = kv(cl, "members", "add", str(W), cl.address(W), "--witness")
        assert r.returncode == 0, r.stderr
        cl.extra = [*cl.extra, "--witness"]
        cl.start(W, join=True)
        r = kv(cl, "members", "list")
        assert f"{W}, {cl.address(W)}, witness" in r.stdout, r.stdout
        leader = cl.wait_leader([1, 2])
        cl.wait_applied(W, cl.status(leader).commit)
        cl.kill(3 - leader)  # the other data node: the leader commits with the witness alone
        with Client(f"{cl.address(leader)},{cl.address(W)}") as c:
            c.put("with-witness", "ok")
            assert c.get("with-witness").kv.value == b"ok" and c.get("before").kv.value == b"witness-free"
        assert cl.status(W).members and not any(p.is_file() and b"witness-free" in p.read_bytes()
                                                for p in (tmp_path / f"node{W}").rglob("*"))
    finally:
        cl.stop_all()


def test_a_joining_node_whose_witness_flag_disagrees_with_the_cluster_stops_at_once(tmp_path: Path) -> None:
    """The role a joining node learns from the cluster (through its log or a snapshot) is checked against
    its `--witness` flag as soon as it learns it: a mismatch stops it (exit USAGE, one line), as it would
    refuse to start the next time, instead of serving in a role the operator did not ask for."""
    from .test_cli import kv

    cl = LocalCluster(tmp_path, 2).start_all()
    try:
        cases = [(3, [], ["--witness"], "node 3 is started with --witness, but its configuration makes it a data"),
                 (4, ["--witness"], [], "node 4 is a witness in its configuration (it holds no data): start it "
                                        "with --witness")]
        for node, add_flags, serve_flags, want in cases:
            cl.add_node(node)
            r = kv(cl, "members", "add", str(node), cl.address(node), *add_flags)
            assert r.returncode == 0, r.stderr
            cl.extra = [f for f in cl.extra if f != "--witness"] + serve_flags
            cl.start(node, join=True)
            try:
                code = cl.procs[node].wait(timeout=30)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"node {node} went on serving with the wrong role; log in {cl.root}") from None
            assert code == exit_codes.USAGE, cl.log_text(node)[-2000:]
            errors = [ln for ln in cl.log_text(node).splitlines() if ln.startswith("Error: ")]
            assert len(errors) == 1 and want in errors[0], errors
            r = kv(cl, "members", "remove", str(node))
            assert r.returncode == 0, r.stderr
        with cl.client() as c:
            c.put("still", "writable")
    finally:
        cl.stop_all()
