"""Locks and elections with fencing tokens, built from leases, transactions and watches.

`Client.lock(name, ttl)`: a key under `__lock/NAME/`, attached to a lease this client keeps alive, is
created; waiters are ordered by the create revision of their keys, and each waits (by watching) for the key
just before its own to be deleted. The holder's **fencing token** is its key's create revision: strictly
increasing per lock name, because every new key gets a newer revision. A protected write must be fenced:
`Client.fenced(lock, ops)` runs them in a Txn that first checks the lock key still exists with that create
revision, so a holder that was paused past its lease (its key deleted, another holder since) cannot write.
A lock alone is not mutual exclusion (Jepsen's etcd 3.4.3 analysis); a lock plus fenced writes is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import grpc

from ..proto.stubs import kv_pb2 as pb
from .errors import DeadlineError
from .requests import _b, prefix_end

LOCK_PREFIX = b"__lock/"
ELECTION_PREFIX = b"__elect/"


@dataclass(slots=True)
class Lock:
    name: bytes
    key: bytes
    token: int
    """The fencing token: the lock key's create revision."""
    lease_id: int
    keep_alive: Any

    def fence(self) -> pb.Compare:
        """The compare a protected write's Txn must carry."""
        return fence_compare(self.key, self.token)


def fence_compare(key: bytes, token: int) -> pb.Compare:
    return pb.Compare(key=key, target=pb.Compare.CREATE, result=pb.Compare.EQUAL, number=token)


class LockCalls:
    """Mixed into `Client`."""

    txn: Any
    range: Any
    get: Any
    watch: Any
    lease_grant: Any
    lease_revoke: Any
    keep_alive: Any

    def lock(self, name: bytes | str, ttl: int = 10, value: bytes | str = b"", prefix: bytes = LOCK_PREFIX,
             timeout: float | None = None) -> Lock:
        """Wait for the lock `name` (at most `timeout` seconds, then DeadlineError; None: as long as it
        takes) and hold it (its lease kept alive by a thread) until `unlock`."""
        n = _b(name)
        lease = self.lease_grant(ttl).id
        ka = self.keep_alive(lease)
        try:
            base = prefix + n + b"/"
            key = base + b"%016x" % lease
            put = pb.RequestOp(put=pb.PutRequest(key=key, value=_b(value), lease=lease))
            get = pb.RequestOp(range=pb.RangeRequest(key=key))
            r = self.txn([pb.Compare(key=key, target=pb.Compare.CREATE, result=pb.Compare.EQUAL, number=0)],
                         [put, get], [get])
            mine = r.responses[-1].range.kvs[0].create_revision
            self._wait_turn(base, mine, None if timeout is None else time.monotonic() + timeout)
            return Lock(n, key, mine, lease, ka)
        except BaseException:
            ka.stop()
            try:
                self.lease_revoke(lease)
            except Exception:  # noqa: BLE001 - it expires on its own
                pass
            raise

    def _wait_turn(self, base: bytes, mine: int, deadline: float | None) -> None:
        """Until no key under `base` was created before ours: watch the one just before, for its delete."""
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineError(f"lock {base.decode(errors='replace')} not taken in time: held by another",
                                    grpc.StatusCode.DEADLINE_EXCEEDED)
            r = self.range(base, prefix_end(base))
            before = [kv for kv in r.kvs if kv.create_revision < mine]
            if not before:
                return
            pred = max(before, key=lambda kv: kv.create_revision)
            stream = self.watch(pred.key, after_revision=r.meta.applied_index, progress_interval_ms=1000)
            try:
                for resp in stream:
                    if any(e.type == e.DELETE for e in resp.events):
                        break
                    if resp.progress_notify and not self.range(pred.key, count_only=True).count:
                        break  # deleted before the watch began (a gap between the read and the watch)
                    if deadline is not None and time.monotonic() > deadline:
                        break
            finally:
                stream.close()

    def unlock(self, lock: Lock) -> None:
        lock.keep_alive.stop()
        self.lease_revoke(lock.lease_id)

    def fenced(self, lock: Lock | tuple[bytes, int], success: list[pb.RequestOp],
               failure: list[pb.RequestOp] = ()) -> pb.TxnResponse:
        """Run `success` only while the lock is still held with this token (`succeeded` False: it is not)."""
        cmp = lock.fence() if isinstance(lock, Lock) else fence_compare(*lock)
        return self.txn([cmp], success, list(failure))

    def leader(self, name: bytes | str, prefix: bytes = ELECTION_PREFIX) -> pb.KeyValue | None:
        """The current leader of election `name` (its key, proposal value and create revision), if any."""
        base = prefix + _b(name) + b"/"
        kvs = list(self.range(base, prefix_end(base)).kvs)
        return min(kvs, key=lambda kv: kv.create_revision) if kvs else None

    def campaign(self, name: bytes | str, proposal: bytes | str, ttl: int = 10) -> Lock:
        """Wait to become the leader of election `name`; the Lock's token fences the leader's writes."""
        return self.lock(name, ttl, proposal, ELECTION_PREFIX)
