"""The operations the load generator issues, one driver per system. A driver turns "put key #i" and
"get key #i" into that system's RPC; both systems get the same keys, values and concurrency."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any

import grpc

from .spec import RunSpec

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


def key_bytes(i: int, size: int) -> bytes:
    k = b"k%012d" % i
    return k.ljust(size, b"_") if size > len(k) else k


def value_bytes(size: int, seed: int = 7) -> bytes:
    return (os.urandom(16) * (size // 16 + 1))[:size] if size else b""


class Driver(ABC):
    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.value = value_bytes(spec.value_size)
        self.channels: dict[str, grpc.aio.Channel] = {}
        self.stubs: dict[str, Any] = {}

    def channel(self, address: str) -> grpc.aio.Channel:
        ch = self.channels.get(address)
        if ch is None:
            ch = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            self.channels[address] = ch
        return ch

    def read_address(self, slot: int) -> str:
        if self.spec.read_target == "leader":
            return self.spec.leader
        eps = self.spec.endpoints
        return eps[slot % len(eps)]

    async def connect(self) -> None:  # noqa: B027 - optional hook: most drivers connect lazily
        """Anything to do once per client process before the measured run."""

    @abstractmethod
    async def put(self, i: int, slot: int) -> None:
        """Each system implements this."""

    @abstractmethod
    async def get(self, i: int, slot: int) -> None:
        """Each system implements this."""

    @abstractmethod
    async def put_many(self, ids: range) -> None:
        """A batched preload write of many keys (one atomic transaction)."""

    async def close(self) -> None:
        for ch in self.channels.values():
            await ch.close()


class RaftkvUnaryDriver(Driver):
    """One KV RPC per operation, straight on the generated stubs."""

    def __init__(self, spec: RunSpec) -> None:
        super().__init__(spec)
        from raftkv.client.requests import read_options, write_options
        from raftkv.proto.stubs import kv_pb2, kv_pb2_grpc

        self.pb = kv_pb2
        self.grpc = kv_pb2_grpc
        self.write = write_options(spec.ack)
        self.read_kwargs: dict[str, Any] = {"consistency": spec.consistency}
        if spec.consistency == "bounded_staleness":
            self.read_kwargs["max_staleness_ms"] = 1000
        self.read_options = read_options
        self.read = read_options(**self.read_kwargs) if spec.consistency != "session" else None

    def stub(self, address: str) -> Any:
        st = self.stubs.get(address)
        if st is None:
            st = self.stubs[address] = self.grpc.KVStub(self.channel(address))
        return st

    async def connect(self) -> None:
        if self.read is None:  # session reads need a token from a write
            reply = await self.stub(self.spec.leader).Put(
                self.pb.PutRequest(key=b"bench-session", value=b"x"), timeout=self.spec.op_timeout_s)
            self.read = self.read_options("session", session_token=reply.meta.session_token)

    async def put(self, i: int, slot: int) -> None:
        req = self.pb.PutRequest(key=key_bytes(i, self.spec.key_size), value=self.value, write=self.write)
        await self.stub(self.spec.leader).Put(req, timeout=self.spec.op_timeout_s)

    async def get(self, i: int, slot: int) -> None:
        req = self.pb.GetRequest(key=key_bytes(i, self.spec.key_size), read=self.read)
        await self.stub(self.read_address(slot)).Get(req, timeout=self.spec.op_timeout_s)

    async def put_many(self, ids: range) -> None:
        pb = self.pb
        ops = [pb.RequestOp(put=pb.PutRequest(key=key_bytes(i, self.spec.key_size), value=self.value)) for i in ids]
        await self.stub(self.spec.leader).Txn(pb.TxnRequest(success=ops), timeout=60)


class RaftkvBatchDriver(RaftkvUnaryDriver):
    """Operations go through the client's batcher: whatever is issued concurrently in one client process
    travels in one KV.Batch RPC per endpoint (answered in order, one result or error per operation).
    Reads and writes have separate batchers, so a read never waits in a batch for a write's commit."""

    def __init__(self, spec: RunSpec) -> None:
        super().__init__(spec)
        self.batchers: dict[tuple[str, str], Any] = {}

    def batcher(self, address: str, kind: str) -> Any:
        b = self.batchers.get((address, kind))
        if b is None:
            from raftkv.client.batching import Batcher

            b = Batcher(self.stub(address), timeout=self.spec.op_timeout_s)
            self.batchers[(address, kind)] = b
        return b

    async def put(self, i: int, slot: int) -> None:
        req = self.pb.PutRequest(key=key_bytes(i, self.spec.key_size), value=self.value, write=self.write)
        await self.batcher(self.spec.leader, "w").put(req)

    async def get(self, i: int, slot: int) -> None:
        req = self.pb.GetRequest(key=key_bytes(i, self.spec.key_size), read=self.read)
        await self.batcher(self.read_address(slot), "r").get(req)


class EtcdDriver(Driver):
    """etcd's v3 KV API: Put, and Range of one key (linearizable unless serializable=true). The same
    driver runs against etcd and, as raftkv's `--client etcd` path, against raftkv's etcd v3 services, so
    that comparison has no client-side difference at all; raftkv's other levels then travel as the
    `raftkv-ack` / `raftkv-consistency` / `raftkv-session-token` metadata (raftkv/api/etcd/levels.py)."""

    def __init__(self, spec: RunSpec) -> None:
        super().__init__(spec)
        from raftkv.proto.etcd_stubs import rpc_pb2, rpc_pb2_grpc

        self.pb, self.grpc = rpc_pb2, rpc_pb2_grpc
        self.serializable = spec.consistency == "serializable"
        self.write_md: tuple[tuple[str, str], ...] | None = None
        self.read_md: tuple[tuple[str, str], ...] | None = None
        if spec.system == "raftkv":
            if spec.ack != "majority":
                self.write_md = (("raftkv-ack", spec.ack),)
            if spec.consistency == "lease":
                self.read_md = (("raftkv-consistency", "lease"),)
            elif spec.consistency == "bounded_staleness":
                self.read_md = (("raftkv-consistency", "bounded_staleness;max_staleness_ms=1000"),)

    async def connect(self) -> None:
        if self.spec.system == "raftkv" and self.spec.consistency == "session":
            call = self.stub(self.spec.leader).Put(self.pb.PutRequest(key=b"bench-session", value=b"x"),
                                                   timeout=self.spec.op_timeout_s)
            await call
            token = dict(await call.trailing_metadata())["raftkv-session-token"]
            self.read_md = (("raftkv-session-token", token),)

    def stub(self, address: str) -> Any:
        st = self.stubs.get(address)
        if st is None:
            st = self.stubs[address] = self.grpc.KVStub(self.channel(address))
        return st

    async def put(self, i: int, slot: int) -> None:
        req = self.pb.PutRequest(key=key_bytes(i, self.spec.key_size), value=self.value)
        await self.stub(self.spec.leader).Put(req, timeout=self.spec.op_timeout_s, metadata=self.write_md)

    async def get(self, i: int, slot: int) -> None:
        req = self.pb.RangeRequest(key=key_bytes(i, self.spec.key_size), serializable=self.serializable)
        await self.stub(self.read_address(slot)).Range(req, timeout=self.spec.op_timeout_s, metadata=self.read_md)

    async def put_many(self, ids: range) -> None:
        pb = self.pb
        ops = [pb.RequestOp(request_put=pb.PutRequest(key=key_bytes(i, self.spec.key_size), value=self.value))
               for i in ids]
        await self.stub(self.spec.leader).Txn(pb.TxnRequest(success=ops), timeout=60)


def make_driver(spec: RunSpec) -> Driver:
    if spec.system == "etcd" or spec.client == "etcd":
        return EtcdDriver(spec)
    if spec.client == "unary":
        return RaftkvUnaryDriver(spec)
    if spec.client == "batch":
        return RaftkvBatchDriver(spec)
    raise ValueError(f"unknown raftkv client path {spec.client!r} (unary, batch or etcd)")
