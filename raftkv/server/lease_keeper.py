"""The lease keeper: how long each lease has left, on the leader, and its expiry through the log.

The lease table (storage/leases.py) is replicated; a lease's time left is not: it lives here, on the
leader's monotonic clock, renewed by keep-alives (which only the leader takes). When a lease runs out, the
keeper proposes its revoke; the revoke is applied on every node at one revision, deleting its keys there
(watchers see the deletes). A node that is not leader keeps nothing. A new leader does not know what its
predecessor had left, so it gives every lease its full TTL, and at least a fresh election timeout, from
the moment it takes over: no lease expires because of a failover (etcd does the same). So a key outlives
its lease's last keep-alive by at most TTL, plus TTL (at least an election timeout) per failover between.

Time comes from the host's clock; a paused leader's clock keeps running, but its revokes can only commit
while it still is the leader, and a new leader starts every lease afresh.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from ..storage import commands
from ..storage.leases import LeaseNotFound, LeaseTable

log = structlog.get_logger("raftkv.lease")

REVOKES_PER_ROUND = 64
"""Expired leases revoked per check, so a mass expiry does not flood the log in one go."""


class LeaseExpired(LeaseNotFound):
    def __init__(self, lease_id: int) -> None:
        super().__init__(lease_id)
        self.args = (f"lease {lease_id} has expired (its revoke is being committed); grant a new one",)


class LeaseKeeper:
    def __init__(self, host: Any, table: Any, interval_s: float | None = None) -> None:
        """`table`: a callable returning the store's current LeaseTable (a snapshot install replaces it)."""
        self.host = host
        self._table = table
        self.deadlines: dict[int, float] = {}
        self.revoking: set[int] = set()
        self._term = 0
        self._synced: tuple[LeaseTable, int] | None = None  # the table (and its version) the deadlines follow
        self.interval_s = interval_s if interval_s is not None else max(0.02, host.cfg.tick_ms / 1000)
        self.election_s = host.cfg.election_ticks * host.cfg.tick_ms / 1000
        self._task: asyncio.Task[None] | None = None

    @property
    def table(self) -> LeaseTable:
        return self._table()

    def _now(self) -> float:
        return self.host.clock.monotonic()

    def _sync(self) -> bool:
        """Bring the deadlines in line with the table and the leadership; False when not leader."""
        host = self.host
        if not host.is_leader:
            if self.deadlines or self._term:
                self.deadlines.clear()
                self._term = 0
                self._synced = None
            return False
        table = self.table
        synced = self._synced
        if host.node.term == self._term and synced is not None and synced[0] is table and synced[1] == table.version:
            return True  # no grant or revoke since the last look: the deadlines already follow the table
        now = self._now()
        leases = table.leases
        self._synced = (table, table.version)
        if host.node.term != self._term:
            # A new leadership: every lease afresh, at least an election timeout.
            self._term = host.node.term
            self.deadlines = {i: now + max(float(lease.ttl), self.election_s) for i, lease in leases.items()}
            self.revoking.clear()
            if leases:
                log.info("leases renewed by a new leader", leases=len(leases), term=self._term)
            return True
        for i, lease in leases.items():
            if i not in self.deadlines:
                self.deadlines[i] = now + float(lease.ttl)  # granted in this leadership
        if len(self.deadlines) != len(leases):
            for i in [i for i in self.deadlines if i not in leases]:
                del self.deadlines[i]
                self.revoking.discard(i)
        return True

    # -- requests (on the leader) -----------------------------------------------------------------
    def keep_alive(self, lease_id: int) -> int:
        """Renew the lease to its full TTL; returns the TTL. Raises NotLeader, LeaseNotFound, LeaseExpired."""
        if not self._sync():
            raise self.host.not_leader()
        lease = self.table.get(lease_id)
        if lease is None:
            raise LeaseNotFound(lease_id)
        now = self._now()
        if lease_id in self.revoking or self.deadlines.get(lease_id, now + 1) <= now:
            raise LeaseExpired(lease_id)
        self.deadlines[lease_id] = now + lease.ttl
        self._count("lease_keepalives")
        return lease.ttl

    def remaining(self, lease_id: int) -> float:
        """Seconds left (0 when expired and being revoked). Raises NotLeader, LeaseNotFound."""
        if not self._sync():
            raise self.host.not_leader()
        if lease_id not in self.table:
            raise LeaseNotFound(lease_id)
        return max(0.0, self.deadlines.get(lease_id, self._now()) - self._now())

    def _count(self, counter: str) -> None:
        c = getattr(getattr(self.host, "metrics", None), counter, None)
        if c is not None:
            c.inc()

    # -- expiry -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping
                pass

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.expire_due()
            except Exception as e:  # noqa: BLE001 - the next round tries again
                log.warning("lease expiry check failed", error=str(e))

    def expire_due(self) -> list[int]:
        """Propose the revoke of every lease past its deadline (a bounded number per call)."""
        if not self._sync():
            return []
        now = self._now()
        due = [i for i, d in self.deadlines.items() if d <= now and i not in self.revoking][:REVOKES_PER_ROUND]
        for lease_id in due:
            self.revoking.add(lease_id)
            asyncio.get_running_loop().create_task(self._revoke(lease_id))
        return due

    async def _revoke(self, lease_id: int) -> None:
        data = commands.encode(commands.LeaseRevoke(lease_id, expired=True))
        try:
            _, _, futures = await self.host.propose([data])
            if futures is not None:
                await futures[0]
            log.info("lease expired", lease=lease_id)
            self._count("lease_expired")
        except Exception as e:  # noqa: BLE001 - not leader any more, or already revoked: fine
            log.debug("lease revoke not committed", lease=lease_id, error=str(e))
        finally:
            self.revoking.discard(lease_id)
            if lease_id in self.table and lease_id in self.deadlines:
                self.deadlines[lease_id] = min(self.deadlines[lease_id], self._now())  # try again
