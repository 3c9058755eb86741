"""Bounded work per request, on real `raftkv serve` processes: request sizes, Range answers, semi-sync
levels that cannot be met, session tokens checked against the log, Txn compare operands, and stderr that
stays JSON."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from benchmarks.ports import free_port
from raftkv.client import Client, RequestTooLargeError
from raftkv.layers.session import SessionToken
from raftkv.proto.stubs import kv_pb2 as pb
from raftkv.proto.stubs import kv_pb2_grpc
from raftkv.status import error_info

from .local_cluster import FAST, LocalCluster

MIB = 1 << 20


def stub(cluster: LocalCluster, i: int) -> tuple[grpc.Channel, kv_pb2_grpc.KVStub]:
    ch = grpc.insecure_channel(cluster.address(i), options=[("grpc.max_send_message_length", -1),
                                                            ("grpc.max_receive_message_length", -1)])
    return ch, kv_pb2_grpc.KVStub(ch)


def peak_rss_bytes(cluster: LocalCluster, i: int) -> int:
    with open(f"/proc/{cluster.procs[i].pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def expect_status(call, code: grpc.StatusCode) -> str:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as ei:
        call()
    assert ei.value.code() == code, ei.value.details()
    return ei.value.details() or ""


# ---------------------------------------------------------------------------------------------- request size
def test_oversized_requests_are_refused_before_proposing(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    before = cluster.status(leader)
    ch, kv = stub(cluster, leader)
    with ch:
        hwm = peak_rss_bytes(cluster, leader)
        # 100 MiB: gRPC itself refuses it, without reading it whole into the server's memory.
        msg = expect_status(lambda: kv.Put(pb.PutRequest(key=b"big", value=b"x" * (100 * MIB)), timeout=30),
                            grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert "larger than max" in msg or "too large" in msg, msg
        assert peak_rss_bytes(cluster, leader) - hwm < 50 * MIB
        # 40 puts of 1 MiB in one transaction: over the gRPC receive limit as well.
        big_txn = pb.TxnRequest(success=[pb.RequestOp(put=pb.PutRequest(key=b"t%d" % i, value=b"v" * MIB))
                                         for i in range(40)])
        expect_status(lambda: kv.Txn(big_txn, timeout=30), grpc.StatusCode.RESOURCE_EXHAUSTED)
        # Under the gRPC limit but over --max-request-bytes: INVALID_ARGUMENT with the size and the limit.
        two = [pb.RequestOp(put=pb.PutRequest(key=b"t%d" % i, value=b"v" * (MIB - 100))) for i in range(2)]
        msg = expect_status(lambda: kv.Txn(pb.TxnRequest(success=two), timeout=10), grpc.StatusCode.INVALID_ARGUMENT)
        assert "request is too large" in msg and str(3 << 19) in msg, msg
        # A batch: each write is refused alone once the batch's writes pass the limit; the others are served.
        batch = pb.BatchRequest(ops=[pb.BatchOp(put=pb.PutRequest(key=b"b%d" % i, value=b"v" * (MIB - 100)))
                                     for i in range(2)] + [pb.BatchOp(put=pb.PutRequest(key=b"b2", value=b"small"))])
        res = kv.Batch(batch, timeout=10).results
        assert res[0].put.meta.index and res[2].put.meta.index
        assert res[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and res[1].error.reason == "REQUEST_TOO_LARGE"
        assert "too large" in res[1].error.message and str(3 << 19) in res[1].error.message
        assert kv.Get(pb.GetRequest(key=b"b0"), timeout=10).found and kv.Get(pb.GetRequest(key=b"b2"), timeout=10).found
        # A follower refuses the same way (before forwarding).
        follower = next(i for i in cluster.ports if i != leader)
        fch, fkv = stub(cluster, follower)
        with fch:
            expect_status(lambda: fkv.Txn(pb.TxnRequest(success=two), timeout=10), grpc.StatusCode.INVALID_ARGUMENT)
            expect_status(lambda: fkv.Put(pb.PutRequest(key=b"big", value=b"x" * (100 * MIB)), timeout=30),
                          grpc.StatusCode.RESOURCE_EXHAUSTED)
        # Nothing was proposed: the cluster kept its leader and term and still serves.
        kv.Put(pb.PutRequest(key=b"after", value=b"ok"), timeout=10)
        assert kv.Get(pb.GetRequest(key=b"after"), timeout=10).kv.value == b"ok"
        for k in (b"big", b"t0", b"b1"):
            assert not kv.Get(pb.GetRequest(key=k), timeout=10).found
    with cluster.client() as c:  # the Python client says it in raftkv's terms, whichever refused it
        for size in (10 * MIB, 2 * MIB):
            with pytest.raises(RequestTooLargeError, match="request is too large"):
                c.put("big", b"x" * size)
    after = cluster.status(leader)
    assert (after.leader_id, after.term) == (before.leader_id, before.term)
    assert after.leader_changes == before.leader_changes


def test_the_largest_allowed_value_is_still_accepted_and_replicated(cluster: LocalCluster) -> None:
    """Peer batches stay under the gRPC limit the port now shares with clients: big entries replicate."""
    leader = cluster.wait_leader()
    ch, kv = stub(cluster, leader)
    with ch:
        last = None
        for i in range(12):  # more than a peer batch of 2 MiB can carry: several batches per follower
            last = kv.Put(pb.PutRequest(key=b"max%d" % i, value=bytes([i]) * MIB), timeout=20)
    for i in cluster.ports:
        cluster.wait_applied(i, last.meta.index)


# ---------------------------------------------------------------------------------------------- Range bounds
@pytest.fixture
def small_range_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path, extra=["--max-range-bytes", "65536", "--max-range-keys", "700"]).start_all()
    try:
        yield c
    finally:
        c.stop_all()


def load_keys(kv: kv_pb2_grpc.KVStub, n: int, value_bytes: int) -> list[bytes]:
    keys = [b"r/%06d" % i for i in range(n)]
    for lo in range(0, n, 500):
        reply = kv.Batch(pb.BatchRequest(ops=[pb.BatchOp(put=pb.PutRequest(key=k, value=b"v" * value_bytes))
                                              for k in keys[lo:lo + 500]]), timeout=30)
        assert not any(r.WhichOneof("result") == "error" for r in reply.results)
    return keys


def page_through(kv: kv_pb2_grpc.KVStub, start: bytes, end: bytes, read: pb.ReadOptions, limit: int = 0
                 ) -> tuple[list[bytes], list[pb.RangeResponse]]:
    seen: list[bytes] = []
    pages = []
    key = start
    while True:
        r = kv.Range(pb.RangeRequest(key=key, range_end=end, limit=limit, read=read), timeout=20)
        pages.append(r)
        seen += [x.key for x in r.kvs]
        if not r.more:
            assert not r.next_key
            return seen, pages
        assert r.kvs and r.next_key == r.kvs[-1].key + b"\0"  # etcd clients continue from last key + \0
        key = r.next_key
        assert len(pages) < 1000


def test_range_answers_are_bounded_and_page_through_every_key_once(small_range_cluster: LocalCluster) -> None:
    c = small_range_cluster
    leader = c.wait_leader()
    ch, kv = stub(c, leader)
    with ch:
        keys = load_keys(kv, 3000, 100)  # ~330 KB of keys and values: five times --max-range-bytes
        first = kv.Range(pb.RangeRequest(key=b"r/", range_end=b"r0"), timeout=20)
        assert first.more and first.count == 3000  # count stays every match, as etcd's
        assert 0 < len(first.kvs) < 3000 and first.ByteSize() <= 65536 + 1024
        seen, pages = page_through(kv, b"r/", b"r0", pb.ReadOptions())
        assert seen == keys and len(pages) > 4
        # Keys only: by count (--max-range-keys 700), not by bytes.
        r = kv.Range(pb.RangeRequest(key=b"r/", range_end=b"r0", keys_only=True), timeout=20)
        assert r.more and len(r.kvs) == 700 and r.count == 3000
        # A client limit under the server's still means what it says.
        r = kv.Range(pb.RangeRequest(key=b"r/", range_end=b"r0", limit=10), timeout=20)
        assert r.more and [x.key for x in r.kvs] == keys[:10] and r.next_key == keys[9] + b"\0"
        r = kv.Range(pb.RangeRequest(key=b"r/", range_end=b"r0", count_only=True), timeout=20)
        assert r.count == 3000 and not r.kvs and not r.more
        # The same through a follower (serializable: its own scan) and in a batch.
        follower = next(i for i in c.ports if i != leader)
        fch, fkv = stub(c, follower)
        with fch:
            seen, _ = page_through(fkv, b"r/", b"r0", pb.ReadOptions(consistency=pb.SERIALIZABLE))
            assert seen == keys
            seen, _ = page_through(fkv, b"r/", b"r0", pb.ReadOptions())
            assert seen == keys
        b = kv.Batch(pb.BatchRequest(ops=[pb.BatchOp(range=pb.RangeRequest(key=b"r/", range_end=b"r0"))]),
                     timeout=20).results[0].range
        assert b.more and b.count == 3000 and b.next_key == b.kvs[-1].key + b"\0" and len(b.kvs) == len(first.kvs)
        # One key bigger than the byte limit is still returned (alone), so paging always progresses.
        kv.Put(pb.PutRequest(key=b"r/000000", value=b"B" * 100_000), timeout=20)
        r = kv.Range(pb.RangeRequest(key=b"r/", range_end=b"r0"), timeout=20)
        assert [x.key for x in r.kvs] == [b"r/000000"] and r.more


# ---------------------------------------------------------------------------------------------- ack levels
def semi(n: int, timeout_ms: int = 2000) -> pb.WriteOptions:
    return pb.WriteOptions(ack=pb.ACK_SEMI_SYNC, min_replicas=n, timeout_ms=timeout_ms)


def test_ack_replies_never_claim_a_level_they_did_not_get(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    followers = sorted(i for i in cluster.ports if i != leader)
    ch, kv = stub(cluster, leader)
    fch, fkv = stub(cluster, followers[0])
    with ch, fch:
        # The semi-sync set is the two other voters: three can never confirm. Refused before proposing,
        # on every write path and through a follower too.
        index_before = cluster.status(leader).last_index
        for call in (lambda: kv.Put(pb.PutRequest(key=b"s", value=b"1", write=semi(3)), timeout=10),
                     lambda: fkv.Put(pb.PutRequest(key=b"s", value=b"1", write=semi(3)), timeout=10),
                     lambda: kv.Txn(pb.TxnRequest(success=[pb.RequestOp(put=pb.PutRequest(key=b"s", value=b"1"))],
                                                  write=semi(5)), timeout=10),
                     lambda: kv.Delete(pb.DeleteRequest(key=b"s", write=semi(3)), timeout=10)):
            msg = expect_status(call, grpc.StatusCode.INVALID_ARGUMENT)
            assert "min_replicas" in msg and "semi-sync set" in msg, msg
        r = kv.Batch(pb.BatchRequest(ops=[pb.BatchOp(put=pb.PutRequest(key=b"s", value=b"1", write=semi(3))),
                                          pb.BatchOp(put=pb.PutRequest(key=b"s2", value=b"1"))]), timeout=10)
        assert r.results[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert r.results[1].put.meta.ack_achieved == pb.ACK_MAJORITY
        assert not kv.Get(pb.GetRequest(key=b"s"), timeout=10).found
        assert cluster.status(leader).last_index == index_before + 1  # only the batch's good write
        # Both other voters: met, and confirmed_by says who.
        m = kv.Put(pb.PutRequest(key=b"s", value=b"2", write=semi(2)), timeout=10).meta
        assert m.ack_achieved == pb.ACK_SEMI_SYNC and not m.degraded
        assert set(followers) <= set(m.confirmed_by) <= set(cluster.ports)
        # Mark one member semi-sync: now the set is that member alone.
        admin = kv_pb2_grpc.AdminStub(ch)
        admin.MemberUpdate(pb.MemberUpdateRequest(id=followers[1], semi_sync=True), timeout=10)
        msg = expect_status(lambda: kv.Put(pb.PutRequest(key=b"s", value=b"3", write=semi(2)), timeout=10),
                            grpc.StatusCode.INVALID_ARGUMENT)
        assert str(followers[1]) in msg, msg
        m = kv.Put(pb.PutRequest(key=b"s", value=b"3", write=semi(1)), timeout=10).meta
        assert m.ack_achieved == pb.ACK_SEMI_SYNC and followers[1] in m.confirmed_by
        # The marked member down: degraded to majority, and confirmed_by leaves it out.
        cluster.stop(followers[1])
        m = kv.Put(pb.PutRequest(key=b"s", value=b"4", write=semi(1, 300)), timeout=10).meta
        assert m.ack_achieved == pb.ACK_MAJORITY and m.degraded
        assert followers[1] not in m.confirmed_by and len(m.confirmed_by) >= 2
        # sync: DEADLINE_EXCEEDED naming who confirmed, never the stopped member.
        with pytest.raises(grpc.RpcError) as ei:
            kv.Put(pb.PutRequest(key=b"s", value=b"5", write=pb.WriteOptions(ack=pb.ACK_SYNC, timeout_ms=300)),
                   timeout=10)
        assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        reason, meta = error_info(ei.value)
        assert reason == "SYNC_TIMEOUT"
        confirmed = {int(x) for x in meta["confirmed_by"].split(",")}
        assert followers[1] not in confirmed and leader in confirmed


# ---------------------------------------------------------------------------------------------- session tokens
def session_get(kv: kv_pb2_grpc.KVStub, token: bytes, timeout: float = 15) -> pb.GetResponse:
    return kv.Get(pb.GetRequest(key=b"sess", read=pb.ReadOptions(consistency=pb.SESSION, session_token=token)),
                  timeout=timeout)


def test_session_tokens_are_checked_against_the_log(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    follower = next(i for i in cluster.ports if i != leader)
    ch, kv = stub(cluster, leader)
    fch, fkv = stub(cluster, follower)
    with ch, fch:
        w = kv.Put(pb.PutRequest(key=b"sess", value=b"1"), timeout=10).meta
        st = cluster.status(leader)
        cid = st.cluster_id
        # Real tokens (from a write, and from a follower's read) are served everywhere.
        assert session_get(fkv, w.session_token).kv.value == b"1"
        read_token = fkv.Get(pb.GetRequest(key=b"sess", read=pb.ReadOptions(consistency=pb.SERIALIZABLE)),
                             timeout=10).meta.session_token
        for k in (kv, fkv):
            assert session_get(k, read_token).found and session_get(k, w.session_token).found
        # A token far beyond the log: refused at once (within a deadline longer than any wait), on the
        # leader and through a follower, instead of waiting out the deadline.
        ahead = SessionToken(index=st.last_index + 1_000_000, term=w.term).encode(cid)
        for k in (kv, fkv):
            msg = expect_status(lambda k=k: session_get(k, ahead, timeout=30), grpc.StatusCode.OUT_OF_RANGE)
            assert "beyond" in msg and str(st.last_index + 1_000_000) in msg, msg
        # A token whose term is not the log's at its index: the write it names was lost.
        lost = SessionToken(index=w.index, term=w.term + 7).encode(cid)
        for k in (kv, fkv):
            msg = expect_status(lambda k=k: session_get(k, lost), grpc.StatusCode.FAILED_PRECONDITION)
            assert "lost" in msg and f"term {w.term}" in msg, msg
        # The same checks in a batch, per operation.
        r = kv.Batch(pb.BatchRequest(ops=[pb.BatchOp(get=pb.GetRequest(
            key=b"sess", read=pb.ReadOptions(consistency=pb.SESSION, session_token=ahead)))]), timeout=30)
        assert r.results[0].error.code == grpc.StatusCode.OUT_OF_RANGE.value[0]


# ---------------------------------------------------------------------------------------------- Txn compares
BAD_COMPARES = {
    "value given a number": pb.Compare(key=b"c", target=pb.Compare.VALUE, number=5),
    "version given bytes": pb.Compare(key=b"c", target=pb.Compare.VERSION, value=b"1"),
    "mod given bytes": pb.Compare(key=b"c", target=pb.Compare.MOD, result=pb.Compare.GREATER, value=b"\x01"),
    "negative create": pb.Compare(key=b"c", target=pb.Compare.CREATE, number=-1),
    "exists 2": pb.Compare(key=b"c", target=pb.Compare.EXISTS, number=2),
    "exists greater": pb.Compare(key=b"c", target=pb.Compare.EXISTS, result=pb.Compare.GREATER, number=1),
    "exists given bytes": pb.Compare(key=b"c", target=pb.Compare.EXISTS, value=b"yes"),
}


def test_txn_compare_with_an_operand_that_does_not_fit_is_refused(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    ch, kv = stub(cluster, leader)
    with ch:
        kv.Put(pb.PutRequest(key=b"c", value=b"1"), timeout=10)
        for name, cmp in BAD_COMPARES.items():
            txn = pb.TxnRequest(compare=[cmp], success=[pb.RequestOp(put=pb.PutRequest(key=b"then", value=b"x"))],
                                failure=[pb.RequestOp(put=pb.PutRequest(key=b"else", value=b"x"))])
            with pytest.raises(grpc.RpcError) as ei:
                kv.Txn(txn, timeout=10)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert "compare" in (ei.value.details() or ""), name
        assert not kv.Get(pb.GetRequest(key=b"then"), timeout=10).found
        assert not kv.Get(pb.GetRequest(key=b"else"), timeout=10).found
        ok = pb.Compare(key=b"c", target=pb.Compare.VERSION, number=1)
        assert kv.Txn(pb.TxnRequest(compare=[ok]), timeout=10).succeeded
        ok = pb.Compare(key=b"c", target=pb.Compare.EXISTS, result=pb.Compare.NOT_EQUAL, number=0)
        assert kv.Txn(pb.TxnRequest(compare=[ok]), timeout=10).succeeded


# ---------------------------------------------------------------------------------------------- JSON stderr
def drop_mid_request(port: int) -> None:
    """Send a whole request and reset the connection at once (SO_LINGER 0): the server's read or write
    fails on a connection that is gone, as with a scraper that timed out."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def test_every_stderr_line_of_a_json_node_is_json(tmp_path: Path) -> None:
    port, mport = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    env["GRPC_TRACE"] = "api"  # makes gRPC core write lines of its own to stderr, many of them
    err = tmp_path / "stderr"
    with open(err, "wb") as f:
        p = subprocess.Popen([sys.executable, "-m", "raftkv.cli.server_main", "serve", "--id", "1", "--data-dir",
                              str(tmp_path / "d"), "--listen", f"127.0.0.1:{port}", "--metrics-listen",
                              f"127.0.0.1:{mport}", "--log-format", "json", "--log-level", "debug", *FAST],
                             stdout=subprocess.DEVNULL, stderr=f, env=env)
    try:
        with Client(f"127.0.0.1:{port}", timeout=20) as c:
            c.put("k", "v")
            for _ in range(30):
                drop_mid_request(mport)
            assert c.get("k").kv.value == b"v"
            with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10) as r:
                assert b"raftkv_" in r.read()  # still serving
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0
    lines = err.read_text().splitlines()
    assert lines
    bad = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            bad.append(line)
    assert not bad, f"{len(bad)} of {len(lines)} stderr lines are not JSON, e.g. {bad[:3]}"
    events = [json.loads(line) for line in lines]
    assert any(e.get("event") == "metrics connection dropped" for e in events)  # the drops did hit the server


PING_PROBE = """
import asyncio, grpc
from raftkv.transport.transport import CHANNEL_OPTIONS, server_options
async def main():
    server = grpc.aio.server(options=server_options(1 << 22))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    # A peer's channel, with its keepalive at 500 ms instead of 10 s, so that ~4 s are many pings.
    opts = [(k, 500 if k == "grpc.keepalive_time_ms" else v) for k, v in CHANNEL_OPTIONS]
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=opts)
    await ch.channel_ready()
    await asyncio.sleep(4)
    await ch.close()
    await server.stop(0)
asyncio.run(main())
"""


def test_peer_keepalive_pings_are_accepted_without_too_many_pings() -> None:
    """Peers ping every keepalive_time even without calls; the server must allow it, or it answers with a
    too_many_pings GOAWAY, which breaks the peer stream and logs a non-JSON line."""
    env = {**os.environ, "GRPC_VERBOSITY": "error"}
    p = subprocess.run([sys.executable, "-c", PING_PROBE], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    assert "too_many_pings" not in p.stderr, p.stderr
