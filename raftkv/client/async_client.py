"""The asyncio client: the same operations and retry rules as `Client`, awaitable."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from ..proto.stubs import kv_pb2 as pb
from ..proto.stubs import kv_pb2_grpc, overload_pb2_grpc
from ..tls import TlsFiles, aio_channel
from .batching import Batcher
from .connect import wait_settled
from .errors import RaftKVError
from .lease import service_stub
from .numbering import Numbering
from .policy import Attempts, Endpoints, as_error, never_sent
from .requests import _b, prefix_end, read_options, write_options
from .resilience import BreakerSettings, Resilience, RetrySettings
from .sync_client import Client
from .tls_diagnosis import diagnose, may_be_tls
from .watch import AsyncWatchCalls

# Unary methods whose operations may travel in a KV.Batch instead, and their field in BatchOp.
BATCHABLE = {"Put": "put", "Get": "get", "Range": "range", "Delete": "delete"}


class AsyncClient(AsyncWatchCalls):
    def __init__(self, endpoints: list[str] | str, timeout: float = 5.0, tls: TlsFiles | None = None,
                 batching: bool = False, connect_timeout: float | None = None,
                 breaker: BreakerSettings | None = None, retry: RetrySettings | None = None,
                 exactly_once: bool = False, session_ttl_s: int = 60) -> None:
        """`batching=True`: put, get, range and delete issued concurrently from this client share KV.Batch
        RPCs (see `batching.Batcher`); each still gets its own reply or error, with the same leader
        discovery and retry rules as a unary call. Worth it under concurrency: the server's cost per RPC
        is then shared by every operation in the batch."""
        if isinstance(endpoints, str):
            endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
        self.endpoints = Endpoints(list(endpoints))
        self.resilience = Resilience(breaker or BreakerSettings(), retry or RetrySettings())
        self.numbering = Numbering(exactly_once, session_ttl_s)
        """Exactly-once numbering of writes (as `Client`'s `exactly_once`)."""
        self._registering: asyncio.Lock | None = None
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.batching = batching
        self.session_token = b""
        self.tls = tls
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._closed = False
        self._batchers: dict[tuple[str, str], Batcher] = {}

    def __repr__(self) -> str:
        return f"AsyncClient(endpoints={self.endpoints.addresses!r}, breakers={self.resilience.states()!r})"

    def metrics(self) -> dict[str, Any]:
        """As `Client.metrics`."""
        return self.resilience.metrics()

    async def close(self) -> None:
        """Close every connection; a closed client makes no new ones (its calls raise ValueError)."""
        self._closed = True
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
        self._batchers.clear()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _channel(self, address: str) -> grpc.aio.Channel:
        ch = self._channels.get(address)
        if ch is None:
            if self._closed:
                raise ValueError("the client is closed")
            ch = aio_channel(address, self.tls)
            self._channels[address] = ch
        return ch

    def _stub(self, address: str, admin: bool | str) -> Any:
        """KV's stub, Admin's (admin True), or the named service's ("Lease", "Watch", "sessions")."""
        ch = self._channel(address)
        if admin == "sessions":
            return overload_pb2_grpc.SessionsStub(ch)
        if isinstance(admin, str):
            return service_stub(admin, ch)
        return kv_pb2_grpc.AdminStub(ch) if admin else kv_pb2_grpc.KVStub(ch)

    _keep_token = Client._keep_token

    def _batcher(self, address: str, kind: str) -> Batcher:
        # Reads and writes batch separately, so a read never waits in a batch for a write's commit.
        key = (address, "read" if kind == "read" else "write")
        b = self._batchers.get(key)
        if b is None:
            b = Batcher(self._stub(address, False), timeout=self.timeout)
            self._batchers[key] = b
        return b

    async def call(self, method: str, request: Any, kind: str = "read", admin: bool | str = False,
                   timeout: float | None = None, endpoint: str | None = None) -> Any:
        numbered = False
        if self.numbering.wanted(method, request):
            if self._registering is None:
                self._registering = asyncio.Lock()
            async with self._registering:
                if not self.numbering.session_id:
                    reply = await self.call("Register", self.numbering.register_request(), "txn", admin="sessions",
                                            timeout=timeout)
                    self.numbering.session_id = reply.session_id
            numbered = self.numbering.number(request)
        try:
            return await self._call(method, request, kind, admin, timeout, endpoint, numbered)
        except RaftKVError as e:
            self.numbering.failed(e)
            raise

    async def _call(self, method: str, request: Any, kind: str, admin: bool | str, timeout: float | None,
                    endpoint: str | None, numbered: bool) -> Any:
        batchable = self.batching and not admin and method in BATCHABLE and not numbered
        attempts = Attempts(self.endpoints, kind, bool(admin), timeout or self.timeout, endpoint, self.connect_timeout,
                            resilience=self.resilience, numbered=numbered)
        while True:
            held = attempts.hold()
            if held:
                await asyncio.sleep(held)
            address, connect_budget = attempts.next()
            if not await wait_settled(self._channel(address), connect_budget):
                await asyncio.sleep(attempts.not_connected(address, connect_budget))
                continue
            budget = attempts.send()
            try:
                if batchable:
                    reply = await asyncio.wait_for(self._batcher(address, kind).submit(
                        pb.BatchOp(**{BATCHABLE[method]: request})), budget)
                else:
                    reply = await getattr(self._stub(address, admin), method)(request, timeout=budget)
            except (grpc.RpcError, RaftKVError, TimeoutError) as e:
                err = as_error(e)
                cause = None
                if never_sent(err) and may_be_tls(str(err)):
                    cause = await asyncio.to_thread(diagnose, address, self.tls, str(err), connect_budget)
                await asyncio.sleep(attempts.failed(address, err, cause))
                continue
            attempts.succeeded(address)
            meta = getattr(reply, "meta", None)
            if meta is not None:
                self._keep_token(meta.session_token)
            return reply

    async def put(self, key: bytes | str, value: bytes | str, ack: str = "default", min_replicas: int = 0,
                  timeout_ms: int = 0, prev_kv: bool = False, timeout: float | None = None) -> pb.PutResponse:
        req = pb.PutRequest(key=_b(key), value=_b(value), prev_kv=prev_kv,
                            write=write_options(ack, min_replicas, timeout_ms))
        return await self.call("Put", req, "write", timeout=timeout)

    async def get(self, key: bytes | str, consistency: str = "default", max_staleness_ms: int | None = None,
                  max_lag_entries: int | None = None, strict: bool = False, session_token: bytes | None = None,
                  endpoint: str | None = None, timeout: float | None = None) -> pb.GetResponse:
        token = self.session_token if session_token is None and consistency == "session" else (session_token or b"")
        req = pb.GetRequest(key=_b(key), read=read_options(consistency, max_staleness_ms, max_lag_entries, strict,
                                                           token))
        return await self.call("Get", req, "read", endpoint=endpoint, timeout=timeout)

    async def range(self, key: bytes | str, range_end: bytes | str = b"", prefix: bool = False, limit: int = 0,
                    consistency: str = "default", endpoint: str | None = None, timeout: float | None = None,
                    **read: Any) -> pb.RangeResponse:
        k = _b(key)
        end = prefix_end(k) if prefix else _b(range_end)
        given = read.pop("session_token", None)
        token = (given if given is not None else self.session_token) if consistency == "session" else b""
        req = pb.RangeRequest(key=k, range_end=end, limit=limit,
                              read=read_options(consistency, session_token=token, **read))
        return await self.call("Range", req, "read", endpoint=endpoint, timeout=timeout)

    async def delete(self, key: bytes | str, ack: str = "default", min_replicas: int = 0, timeout_ms: int = 0,
                     timeout: float | None = None) -> pb.DeleteResponse:
        req = pb.DeleteRequest(key=_b(key), write=write_options(ack, min_replicas, timeout_ms))
        return await self.call("Delete", req, "write", timeout=timeout)

    async def txn(self, compares: list[pb.Compare], success: list[pb.RequestOp], failure: list[pb.RequestOp] = (),
                  ack: str = "default", min_replicas: int = 0, timeout_ms: int = 0,
                  timeout: float | None = None) -> pb.TxnResponse:
        req = pb.TxnRequest(compare=compares, success=success, failure=list(failure),
                            write=write_options(ack, min_replicas, timeout_ms))
        return await self.call("Txn", req, "txn", timeout=timeout)

    async def status(self, endpoint: str | None = None) -> pb.StatusResponse:
        return await self.call("Status", pb.StatusRequest(), "read", admin=True, endpoint=endpoint)
