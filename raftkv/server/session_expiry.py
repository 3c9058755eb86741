"""Expiry of client sessions (storage/sessions.py), decided by the leader and committed through the log,
so a session vanishes at one index everywhere. Runs on every node's host loop, acts on the leader only.

The leader remembers, per session, the index of its last activity as last seen and when (on its own
monotonic clock) it first saw that index. A session whose activity index has not moved for its TTL is
expired by proposing `ExpireSession(id, that index)`: the state machine drops it only if its activity is
still that index, so a write racing the expiry keeps the session. A new leader starts with no memory,
so every session gets at least a full TTL under it before expiring (as leases do)."""

from __future__ import annotations

import asyncio

import structlog

from ..storage import commands, sessions
from .host import NodeHost

log = structlog.get_logger("raftkv.sessions")
CHECK_EVERY_S = 1.0


class SessionKeeper:
    def __init__(self, host: NodeHost) -> None:
        self.host = host
        self._seen: dict[int, tuple[int, float]] = {}  # id -> (last activity index, first seen at)
        self._last_check = 0.0
        self._term = -1
        self._busy = False
        self.expired = 0
        host.every_round(self._round)

    def _round(self) -> None:
        now = self.host.clock.monotonic()
        if self._busy or now - self._last_check < CHECK_EVERY_S:
            return
        self._last_check = now
        if self.host.node.term != self._term:  # a new term of ours: start the clocks afresh
            self._term = self.host.node.term
            self._seen.clear()
        self._busy = True
        asyncio.get_running_loop().create_task(self._check(now))

    async def _check(self, now: float) -> None:
        try:
            reader = getattr(self.host.store, "session_records", None)
            if reader is None:
                return
            records = await asyncio.to_thread(reader)
            due = []
            live = set()
            for sid, rec in records:
                live.add(sid)
                seen = self._seen.get(sid)
                if seen is None or seen[0] != rec.last_active:
                    self._seen[sid] = (rec.last_active, now)
                elif now - seen[1] >= rec.ttl_s:
                    due.append((sid, rec.last_active))
            for sid in list(self._seen):
                if sid not in live:
                    del self._seen[sid]
            for sid, last in due:
                if not self.host.is_leader:
                    return
                _, _, applied = await self.host.propose([commands.encode(sessions.ExpireSession(sid, last))])
                assert applied is not None
                if await applied[0]:
                    self.expired += 1
                    self._seen.pop(sid, None)
                    log.info("client session expired", session=sid, last_active=last)
        except Exception as e:  # noqa: BLE001 - tried again at the next check (not leader, overloaded, ...)
            log.debug("session expiry check failed", error=repr(e))
        finally:
            self._busy = False
