"""The blocking client."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc

from ..layers.session import SessionToken
from ..proto.stubs import kv_pb2 as pb
from ..proto.stubs import kv_pb2_grpc, overload_pb2_grpc
from ..tls import TlsFiles, sync_channel
from .connect import ChannelWatch
from .errors import RaftKVError, from_rpc_error
from .lease import LeaseCalls, keep_alive_once_stub, service_stub
from .lock import LockCalls
from .numbering import Numbering
from .policy import Attempts, Endpoints, never_sent
from .requests import _b, prefix_end, read_options, write_options
from .resilience import BreakerSettings, Resilience, RetrySettings
from .tls_diagnosis import diagnose, may_be_tls
from .watch import WatchCalls


class Client(LeaseCalls, WatchCalls, LockCalls):
    """A raftkv client over any number of endpoints. It finds the leader, retries what is safe to retry
    within `timeout` seconds, and keeps the newest session token it has seen, so `consistency="session"`
    reads see this client's own writes on any node.

    `connect_timeout`: how long one try waits for a node's connection before moving on to the next node
    (default: a third of `timeout`, at most 2 s). A write that was sent and then lost its answer is not
    retried: it raises `OutcomeUnknownError`. `dial_bound`: a call fails once every endpoint has failed to
    connect (each within `connect_timeout`) rather than retrying until `timeout` (etcdctl's --dial-timeout)."""

    def __init__(self, endpoints: list[str] | str, timeout: float = 5.0, tls: TlsFiles | None = None,
                 connect_timeout: float | None = None, dial_bound: bool = False,
                 breaker: BreakerSettings | None = None, retry: RetrySettings | None = None,
                 exactly_once: bool = False, session_ttl_s: int = 60) -> None:
        """`breaker`, `retry`: the circuit breaker's and the retry budget's settings (resilience.py).

        `exactly_once=True`: the client registers a session (through the log, on its first write) and
        numbers its puts, deletes and transactions; a write whose outcome is unknown (its connection broke,
        its node died) is then retried with the same number, and the cluster applies it at most once and
        answers the first result. Off by default: without it such a write raises OutcomeUnknownError."""
        if isinstance(endpoints, str):
            endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
        self.endpoints = Endpoints(list(endpoints))
        self.resilience = Resilience(breaker or BreakerSettings(), retry or RetrySettings())
        self.numbering = Numbering(exactly_once, session_ttl_s)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.dial_bound = dial_bound
        self.session_token = b""
        self.tls = tls
        self._channels: dict[str, grpc.Channel] = {}
        self._watches: dict[str, ChannelWatch] = {}
        self._channel_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"Client(endpoints={self.endpoints.addresses!r}, breakers={self.resilience.states()!r})"

    def metrics(self) -> dict[str, Any]:
        """Requests, retries (made, and refused by the retry budget), retry tokens left, and each
        endpoint's circuit breaker (state, consecutive failures, times opened, calls rejected)."""
        return self.resilience.metrics()

    def close(self) -> None:
        """Close every connection. A closed client makes no new ones: its calls raise ValueError, and a
        watch iterated on another thread ends (it would otherwise reconnect and watch on)."""
        with self._channel_lock:
            self._closed = True
        for w in list(self._watches.values()):
            w.close()
        self._watches.clear()
        for ch in list(self._channels.values()):
            ch.close()
        self._channels.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _channel(self, address: str) -> grpc.Channel:
        """The channel to `address`, made once: threads may share a client (a lease's keep-alive thread
        does), so a channel is published only with its connectivity watch beside it."""
        ch = self._channels.get(address)
        if ch is None:
            with self._channel_lock:
                if self._closed:
                    raise ValueError("the client is closed")
                ch = self._channels.get(address)
                if ch is None:
                    ch = sync_channel(address, self.tls)
                    self._watches[address] = ChannelWatch(ch)
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

    def _keep_token(self, token: bytes) -> None:
        if not token:
            return
        if not self.session_token:
            self.session_token = token
            return
        new, old = SessionToken.peek(token), SessionToken.peek(self.session_token)
        if new is not None and (old is None or new > old):
            self.session_token = token

    def call(self, method: str, request: Any, kind: str = "read", admin: bool | str = False,
             timeout: float | None = None, endpoint: str | None = None) -> Any:
        numbered = False
        if self.numbering.wanted(method, request):
            with self.numbering.lock:
                if not self.numbering.session_id:
                    reply = self.call("Register", self.numbering.register_request(), "txn", admin="sessions",
                                      timeout=timeout)
                    self.numbering.session_id = reply.session_id
                numbered = self.numbering.number(request)
        try:
            return self._call(method, request, kind, admin, timeout, endpoint, numbered)
        except RaftKVError as e:
            self.numbering.failed(e)
            raise

    def _call(self, method: str, request: Any, kind: str, admin: bool | str, timeout: float | None,
              endpoint: str | None, numbered: bool) -> Any:
        attempts = Attempts(self.endpoints, kind, bool(admin), timeout or self.timeout, endpoint, self.connect_timeout,
                            self.dial_bound, resilience=self.resilience, numbered=numbered)
        while True:
            held = attempts.hold()
            if held:
                time.sleep(held)
            address, connect_budget = attempts.next()
            stub = self._stub(address, admin)
            if not self._watches[address].wait(connect_budget):
                time.sleep(attempts.not_connected(address, connect_budget))
                continue
            try:
                if method == "KeepAliveOnce":
                    reply = keep_alive_once_stub(stub, request, attempts.send())
                else:
                    reply = getattr(stub, method)(request, timeout=attempts.send())
            except grpc.RpcError as e:
                err = from_rpc_error(e)
                time.sleep(attempts.failed(address, err, self._tls_cause(address, err, connect_budget)))
                continue
            attempts.succeeded(address)
            meta = getattr(reply, "meta", None)
            if meta is not None:
                self._keep_token(meta.session_token)
            return reply

    def _tls_cause(self, address: str, err: Any, timeout: float) -> str | None:
        """What TLS set up wrong explains this failure to connect, if anything (see tls_diagnosis)."""
        if not (never_sent(err) and may_be_tls(str(err))):
            return None
        return diagnose(address, self.tls, str(err), timeout)

    # -- KV ------------------------------------------------------------------------------------
    def put(self, key: bytes | str, value: bytes | str, ack: str = "default", min_replicas: int = 0,
            timeout_ms: int = 0, prev_kv: bool = False, timeout: float | None = None, lease: int = 0
            ) -> pb.PutResponse:
        """`lease`: attach the key to this lease (Client.lease_grant): it is deleted when the lease ends."""
        req = pb.PutRequest(key=_b(key), value=_b(value), prev_kv=prev_kv, lease=lease,
                            write=write_options(ack, min_replicas, timeout_ms))
        return self.call("Put", req, "write", timeout=timeout)

    def get(self, key: bytes | str, consistency: str = "default", max_staleness_ms: int | None = None,
            max_lag_entries: int | None = None, strict: bool = False, session_token: bytes | None = None,
            endpoint: str | None = None, timeout: float | None = None) -> pb.GetResponse:
        token = self.session_token if session_token is None and consistency == "session" else (session_token or b"")
        req = pb.GetRequest(key=_b(key), read=read_options(consistency, max_staleness_ms, max_lag_entries, strict,
                                                           token))
        return self.call("Get", req, "read", endpoint=endpoint, timeout=timeout)

    def range(self, key: bytes | str, range_end: bytes | str = b"", prefix: bool = False, limit: int = 0,
              keys_only: bool = False, count_only: bool = False, consistency: str = "default",
              endpoint: str | None = None, timeout: float | None = None, **read: Any) -> pb.RangeResponse:
        k = _b(key)
        end = prefix_end(k) if prefix else _b(range_end)
        given = read.pop("session_token", None)
        token = (given if given is not None else self.session_token) if consistency == "session" else b""
        req = pb.RangeRequest(key=k, range_end=end, limit=limit, keys_only=keys_only, count_only=count_only,
                              read=read_options(consistency, session_token=token, **read))
        return self.call("Range", req, "read", endpoint=endpoint, timeout=timeout)

    def delete(self, key: bytes | str, range_end: bytes | str = b"", prefix: bool = False, prev_kv: bool = False,
               ack: str = "default", min_replicas: int = 0, timeout_ms: int = 0,
               timeout: float | None = None) -> pb.DeleteResponse:
        k = _b(key)
        end = prefix_end(k) if prefix else _b(range_end)
        req = pb.DeleteRequest(key=k, range_end=end, prev_kv=prev_kv, write=write_options(ack, min_replicas, timeout_ms))
        return self.call("Delete", req, "write", timeout=timeout)

    def txn(self, compares: list[pb.Compare], success: list[pb.RequestOp], failure: list[pb.RequestOp] = (),
            ack: str = "default", min_replicas: int = 0, timeout_ms: int = 0,
            timeout: float | None = None) -> pb.TxnResponse:
        req = pb.TxnRequest(compare=compares, success=success, failure=list(failure),
                            write=write_options(ack, min_replicas, timeout_ms))
        return self.call("Txn", req, "txn", timeout=timeout)

    # -- Admin ---------------------------------------------------------------------------------
    def status(self, endpoint: str | None = None, timeout: float | None = None) -> pb.StatusResponse:
        return self.call("Status", pb.StatusRequest(), "read", admin=True, endpoint=endpoint, timeout=timeout)

    def members(self) -> pb.MemberListResponse:
        return self.call("MemberList", pb.MemberListRequest(), "read", admin=True)

    def member_add(self, node_id: int, address: str, learner: bool = False, sync: bool = False,
                   semi_sync: bool = False, spare: bool = False, witness: bool = False,
                   peer_address: str = "") -> pb.MemberResponse:
        return self.call("MemberAdd", pb.MemberAddRequest(id=node_id, address=address, learner=learner, sync=sync,
                                                          semi_sync=semi_sync, spare=spare, witness=witness,
                                                          peer_address=peer_address), "txn", admin=True)

    def member_remove(self, node_id: int) -> pb.MemberResponse:
        return self.call("MemberRemove", pb.MemberRemoveRequest(id=node_id), "txn", admin=True)

    def member_promote(self, node_id: int) -> pb.MemberResponse:
        return self.call("MemberPromote", pb.MemberPromoteRequest(id=node_id), "txn", admin=True)

    def member_update(self, node_id: int, address: str = "", sync: bool | None = None,
                      semi_sync: bool | None = None, spare: bool | None = None,
                      peer_address: str | None = None) -> pb.MemberResponse:
        """Change a member's address and/or marks; a mark left as None keeps its current value."""
        if sync is None or semi_sync is None:
            current = next((m for m in self.members().members if m.id == node_id), None)
            if current is not None:
                sync = current.sync if sync is None else sync
                semi_sync = current.semi_sync if semi_sync is None else semi_sync
        sync, semi_sync = bool(sync), bool(semi_sync)
        return self.call("MemberUpdate", pb.MemberUpdateRequest(id=node_id, address=address, sync=sync,
                                                                semi_sync=semi_sync, spare=spare,
                                                                peer_address=peer_address), "txn", admin=True)

    def transfer_leader(self, target: int) -> pb.TransferLeaderResponse:
        return self.call("TransferLeader", pb.TransferLeaderRequest(target_id=target), "txn", admin=True)

    def snapshot(self, endpoint: str | None = None) -> pb.SnapshotResponse:
        return self.call("Snapshot", pb.SnapshotRequest(), "read", admin=True, endpoint=endpoint)

    def lag(self) -> pb.LagResponse:
        return self.call("Lag", pb.LagRequest(), "read", admin=True)
