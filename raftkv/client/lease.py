"""Lease calls of the client: grant, revoke, keep-alive (once, or kept by a thread), time-to-live, list."""

from __future__ import annotations

import threading
from typing import Any

import grpc

from ..proto.stubs import lease_pb2 as lpb
from ..proto.stubs import lease_pb2_grpc, watch_pb2_grpc
from .errors import RaftKVError


def service_stub(service: str, ch: Any) -> Any:
    if service == "Lease":
        return lease_pb2_grpc.LeaseStub(ch)
    if service == "Watch":
        return watch_pb2_grpc.WatchStub(ch)
    raise ValueError(f"unknown service {service!r}")


class LeaseCalls:
    """Mixed into `Client`: needs its `call`, `_stub`, `endpoints` and `timeout`."""

    call: Any
    _stub: Any
    endpoints: Any
    timeout: float

    def lease_grant(self, ttl: int, lease_id: int = 0, timeout: float | None = None) -> lpb.LeaseGrantResponse:
        """A lease of `ttl` seconds; its id is in the reply (`lease_id` 0: the cluster picks one)."""
        return self.call("Grant", lpb.LeaseGrantRequest(ttl=ttl, id=lease_id), "txn", admin="Lease", timeout=timeout)

    def lease_revoke(self, lease_id: int, timeout: float | None = None) -> lpb.LeaseRevokeResponse:
        """End the lease now; its keys are deleted."""
        return self.call("Revoke", lpb.LeaseRevokeRequest(id=lease_id), "txn", admin="Lease", timeout=timeout)

    def lease_time_to_live(self, lease_id: int, keys: bool = False,
                           timeout: float | None = None) -> lpb.LeaseTimeToLiveResponse:
        return self.call("TimeToLive", lpb.LeaseTimeToLiveRequest(id=lease_id, keys=keys), "txn", admin="Lease",
                         timeout=timeout)

    def lease_list(self, timeout: float | None = None) -> lpb.LeaseListResponse:
        return self.call("List", lpb.LeaseListRequest(), "txn", admin="Lease", timeout=timeout)

    def lease_keep_alive_once(self, lease_id: int, timeout: float | None = None) -> lpb.LeaseKeepAliveResponse:
        """Renew the lease to its full TTL once (on the leader, found as for a write)."""
        return self.call("KeepAliveOnce", lease_id, "txn", admin="Lease", timeout=timeout)

    def keep_alive(self, lease_id: int, interval: float | None = None) -> KeepAlive:
        """Keep the lease alive from a background thread until `.stop()` (or the lease is gone: `.error`)."""
        return KeepAlive(self, lease_id, interval)


def keep_alive_once_stub(stub: Any, lease_id: int, timeout: float) -> lpb.LeaseKeepAliveResponse:
    """One request on a KeepAlive stream (what `Client.call` sends as "KeepAliveOnce")."""
    stream = stub.KeepAlive(iter([lpb.LeaseKeepAliveRequest(id=lease_id)]), timeout=timeout)
    for reply in stream:
        return reply
    raise RaftKVError("the keep-alive stream ended without an answer", grpc.StatusCode.UNAVAILABLE)


class KeepAlive:
    """A thread renewing one lease every `interval` seconds (default: a third of its TTL). Failures are
    retried on other nodes within the TTL; a lease found gone (expired, revoked) stops it, with `error`."""

    def __init__(self, client: Any, lease_id: int, interval: float | None = None) -> None:
        self.client = client
        self.lease_id = lease_id
        self.error: RaftKVError | None = None
        self.ttl = 0
        self._stop = threading.Event()
        first = client.lease_keep_alive_once(lease_id)
        self.ttl = int(first.ttl)
        self.interval = interval if interval is not None else max(0.2, self.ttl / 3)
        self._thread = threading.Thread(target=self._run, name=f"raftkv-keepalive-{lease_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from .errors import NotFoundError

        while not self._stop.wait(self.interval):
            try:
                self.ttl = int(self.client.lease_keep_alive_once(self.lease_id, timeout=max(1.0, self.ttl / 2)).ttl)
            except NotFoundError as e:
                self.error = e
                return
            except RaftKVError as e:  # retried next round, within the TTL
                self.error = e

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


__all__ = ["KeepAlive", "LeaseCalls", "keep_alive_once_stub", "service_stub"]
