"""KV.Batch on a real 3-node cluster: one result per operation in request order, each operation's own
error, writes applied in request order, forwarding from a follower, and the client's coalescing
Batcher under concurrency."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from raftkv.client import AsyncClient, InvalidArgumentError
from raftkv.client.batching import Batcher
from raftkv.proto.stubs import kv_pb2 as pb
from raftkv.proto.stubs import kv_pb2_grpc

from .local_cluster import LocalCluster


def _put(key: bytes, value: bytes, **write: object) -> pb.BatchOp:
    return pb.BatchOp(put=pb.PutRequest(key=key, value=value, write=pb.WriteOptions(**write)))


def _get(key: bytes, **read: object) -> pb.BatchOp:
    return pb.BatchOp(get=pb.GetRequest(key=key, read=pb.ReadOptions(**read)))


def _batch(address: str, ops: list[pb.BatchOp]) -> pb.BatchResponse:
    with grpc.insecure_channel(address) as ch:
        return kv_pb2_grpc.KVStub(ch).Batch(pb.BatchRequest(ops=ops), timeout=10)


def test_batch_answers_every_operation_in_order_with_its_own_error(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    with cluster.client() as c:
        c.put("pre", "old")
        c.put("gone", "old")
    # A read need not observe a write of its own batch, so no read here touches a key the batch writes.
    ops = [
        _put(b"a", b"1"),
        _put(b"", b"no key"),                                       # invalid: fails alone
        _put(b"b", b"2", ack=pb.ACK_SYNC),
        _put(b"a", b"3"),                                           # same key again: applied after the first
        _get(b"pre"),                                               # linearizable (default)
        _get(b"pre", consistency=pb.SERIALIZABLE),
        _get(b"missing"),
        _get(b"pre", consistency=pb.SESSION, session_token=b"garbage"),  # invalid token: fails alone
        pb.BatchOp(delete=pb.DeleteRequest(key=b"gone", prev_kv=True)),
        pb.BatchOp(range=pb.RangeRequest(key=b"p", range_end=b"q")),
        pb.BatchOp(),                                               # no operation at all
        _put(b"c", b"x" * 2_000_000),                               # over the value limit
    ]
    res = _batch(cluster.address(leader), ops)
    kinds = [r.WhichOneof("result") for r in res.results]
    assert kinds == ["put", "error", "put", "put", "get", "get", "get", "error", "delete", "range", "error",
                     "error"]
    err = res.results[1].error
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "key must not be empty" in err.message
    assert res.results[7].error.reason == "INVALID_SESSION_TOKEN"
    assert res.results[10].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "limit" in res.results[11].error.message
    # Writes go into the log in request order, each acknowledged at its own level.
    i_a1, i_b, i_a2 = (res.results[k].put.meta.index for k in (0, 2, 3))
    assert 0 < i_a1 < i_b < i_a2 < res.results[8].delete.meta.index
    assert res.results[2].put.meta.ack_achieved == pb.ACK_SYNC
    assert res.results[0].put.meta.ack_achieved == pb.ACK_MAJORITY
    assert res.results[4].get.found and res.results[4].get.kv.value == b"old"
    assert res.results[5].get.meta.consistency_achieved == pb.SERIALIZABLE
    assert not res.results[6].get.found
    assert res.results[8].delete.deleted == 1 and res.results[8].delete.prev_kvs[0].value == b"old"
    assert [kv.key for kv in res.results[9].range.kvs] == [b"pre"]
    with cluster.client() as c:
        assert c.get("a").kv.value == b"3"  # the later put of the same key won
        assert c.get("b").kv.value == b"2"
        assert not c.get("gone").found and c.get("pre").kv.value == b"old"


def test_batch_sent_to_a_follower_forwards_writes_and_serves_reads(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    follower = next(i for i in (1, 2, 3) if i != leader)
    res = _batch(cluster.address(follower), [_put(b"f1", b"v1"), _put(b"f2", b"v2")])
    assert [r.WhichOneof("result") for r in res.results] == ["put", "put"]
    assert all(r.put.meta.served_by == leader for r in res.results)
    last = res.results[1].put.meta.index
    cluster.wait_applied(follower, last)
    res = _batch(cluster.address(follower), [_get(b"f1"), _get(b"f2", consistency=pb.SERIALIZABLE),
                                             _put(b"f3", b"v3"), _get(b"nope")])
    assert [r.WhichOneof("result") for r in res.results] == ["get", "get", "put", "get"]
    assert res.results[0].get.kv.value == b"v1" and res.results[0].get.meta.served_by == follower
    assert res.results[1].get.kv.value == b"v2" and res.results[1].get.meta.served_by == follower
    assert res.results[2].put.meta.index > last
    assert not res.results[3].get.found


@pytest.mark.asyncio
async def test_batcher_coalesces_concurrent_operations(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    async with grpc.aio.insecure_channel(cluster.address(leader)) as ch:
        b = Batcher(kv_pb2_grpc.KVStub(ch), timeout=10)
        n = 300
        puts = [b.put(pb.PutRequest(key=f"k{i}".encode(), value=f"v{i}".encode())) for i in range(n)]
        bad = b.put(pb.PutRequest(key=b"", value=b"x"))
        results = await asyncio.gather(*puts, bad, return_exceptions=True)
        assert all(isinstance(r, pb.PutResponse) and r.meta.index > 0 for r in results[:n])
        assert isinstance(results[n], InvalidArgumentError)
        assert len({r.meta.index for r in results[:n]}) == n
        assert b.ops_sent == n + 1 and b.batches_sent < n // 10  # concurrent operations shared RPCs
        gets = await asyncio.gather(*(b.get(pb.GetRequest(key=f"k{i}".encode())) for i in range(n)))
        assert [g.kv.value for g in gets] == [f"v{i}".encode() for i in range(n)]


@pytest.mark.asyncio
async def test_batcher_keeps_each_batch_under_the_servers_request_limit(cluster: LocalCluster) -> None:
    """64 KiB values, 60 at once: together 3.9 MB, over the server's default --max-request-bytes (1.5
    MiB). The client splits them into batches the server takes, so none is refused as too large."""
    leader = cluster.wait_leader()
    async with grpc.aio.insecure_channel(cluster.address(leader)) as ch:
        b = Batcher(kv_pb2_grpc.KVStub(ch), timeout=20)
        value = b"v" * (64 << 10)
        results = await asyncio.gather(*(b.put(pb.PutRequest(key=f"big{i}".encode(), value=value))
                                         for i in range(60)), return_exceptions=True)
        refused = [r for r in results if not isinstance(r, pb.PutResponse)]
        assert not refused, refused[:3]
        assert b.batches_sent >= 3  # 3.9 MB cannot go in fewer batches under 1.5 MiB
        assert b.batches_sent < 60  # and they still shared RPCs


@pytest.mark.asyncio
async def test_async_client_with_batching_gives_each_caller_its_own_answer(cluster: LocalCluster) -> None:
    cluster.wait_leader()
    async with AsyncClient(cluster.endpoints, timeout=10, batching=True) as c:
        n = 200
        puts = await asyncio.gather(*(c.put(f"ac{i}", f"v{i}") for i in range(n)))
        assert len({p.meta.index for p in puts}) == n
        with pytest.raises(InvalidArgumentError):
            await c.put("", "no key")
        gets, missing = await asyncio.gather(
            asyncio.gather(*(c.get(f"ac{i}") for i in range(n))), c.get("ac-missing"))
        assert [g.kv.value for g in gets] == [f"v{i}".encode() for i in range(n)]
        assert not missing.found
        r = await c.get("ac7", consistency="session")  # the client's session token rides along
        assert r.kv.value == b"v7" and r.meta.consistency_achieved == pb.SESSION
        assert sum(b.batches_sent for b in c._batchers.values()) < n  # operations shared RPCs


def test_a_one_node_cluster_answers_a_batch_it_commits_and_applies_without_yielding(tmp_path: Path) -> None:
    """On one node a batch of writes is persisted, committed and applied in consecutive Readys of one
    loop iteration, with no peer to wait for: every write must still get its own answer."""
    cluster = LocalCluster(tmp_path, n=1).start_all()
    try:
        leader = cluster.wait_leader()
        for round_ in range(3):
            ops = [_put(f"solo-{round_}-{i}".encode(), str(i).encode()) for i in range(50)]
            reply = _batch(cluster.address(leader), ops)
            kinds = [r.WhichOneof("result") for r in reply.results]
            assert kinds == ["put"] * 50, [r.error for r in reply.results if r.HasField("error")][:3]
            indexes = [r.put.meta.index for r in reply.results]
            assert indexes == list(range(indexes[0], indexes[0] + 50))
        with cluster.client() as c:
            assert c.get("solo-2-49").kv.value == b"49"
    finally:
        cluster.stop_all()
