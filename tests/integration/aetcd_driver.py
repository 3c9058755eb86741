"""Drives an etcd v3 endpoint with the PyPI `aetcd` client library (asyncio), as a user's program would,
and prints what it saw as one JSON object. Run in a process of its own by test_etcd_api.py: aetcd's
generated stubs and raftkv's (raftkv.proto.etcd) both register `etcdserverpb` in protobuf's default
descriptor pool, so the two cannot be imported into one process.

    python -m tests.integration.aetcd_driver HOST:PORT
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aetcd
import aetcd.exceptions


async def drive(host: str, port: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with aetcd.Client(host=host, port=port, timeout=10) as c:
        put = await c.put(b"lib/a", b"1")
        out["put_revision"] = put.header.revision
        await c.put(b"lib/b", b"2")
        got = await c.get(b"lib/a")
        out["get"] = [got.value.decode(), got.version, got.mod_revision]
        out["get_missing"] = await c.get(b"lib/none")
        rng = await c.get_prefix(b"lib/")
        out["prefix"] = [kv.key.decode() for kv in rng]
        prev = await c.put(b"lib/a", b"1b", prev_kv=True)
        out["prev_kv"] = prev.prev_kv.value.decode()
        t = c.transactions
        ok, _ = await c.transaction(compare=[t.value(b"lib/a") == b"1b", t.version(b"lib/b") > 0],
                                    success=[t.put(b"lib/c", b"3")], failure=[t.put(b"lib/c", b"x")])
        out["txn_succeeded"] = ok
        ok, resp = await c.transaction(compare=[t.mod(b"lib/a") < 1], success=[], failure=[t.get(b"lib/c")])
        out["txn_failed_get"] = [ok, [v.decode() for v, _ in resp[0]]]
        deleted = await c.delete_prefix(b"lib/", prev_kv=True)
        out["deleted"] = deleted.deleted
        out["members"] = sorted(m.id for m in [m async for m in c.members()])
        st = await c.status()
        out["status"] = [st.version, st.leader.id if st.leader else 0, st.raft_term > 0]
        out["alarms"] = [a.alarm_type async for a in c.list_alarms()]
        try:
            await c.put(b"lib/l", b"v", lease=12345)
            out["lease_error"] = ""
        except aetcd.exceptions.ClientError as e:
            out["lease_error"] = type(e).__name__ + ": " + str(e)
        # Leases, a key attached to one, keep-alive, revoke; a watch; a lock (aetcd's recipes over them).
        lease = await c.lease(ttl=30)
        await c.put(b"lib/leased", b"v", lease=lease)
        info = await c.get_lease_info(lease.id)
        refreshed = await c.refresh_lease(lease.id)
        out["lease"] = [info.grantedTTL, [k.decode() for k in info.keys], refreshed.TTL]
        await c.revoke_lease(lease.id)
        out["leased_after_revoke"] = await c.get(b"lib/leased")
        start = (await c.put(b"lib/w", b"0")).header.revision
        await c.put(b"lib/w", b"1")
        ev = await c.watch_once(b"lib/w", timeout=10, start_revision=start + 1)
        out["watch"] = [ev.kv.value.decode(), ev.kv.mod_revision > start]
        lock = c.lock(b"lib-lock", ttl=10)
        await lock.acquire()
        out["lock"] = [await lock.is_acquired()]
        await lock.release()
        out["lock"].append(await lock.is_acquired())
        # raftkv's levels with an unmodified library: its per-call metadata carries them.
        c.metadata = (("raftkv-ack", "semi_sync;min_replicas=1;timeout_ms=2000"),)
        await c.put(b"lib/semi", b"s")
        c.metadata = (("raftkv-ack", "no_such_level"),)
        try:
            await c.put(b"lib/semi", b"t")
            out["bad_level_error"] = ""
        except aetcd.exceptions.ClientError as e:
            out["bad_level_error"] = type(e).__name__
        c.metadata = None
        got = await c.get(b"lib/semi")
        out["semi_value"] = got.value.decode()
    return out


def main() -> int:
    host, _, port = sys.argv[1].rpartition(":")
    print(json.dumps(asyncio.run(drive(host, int(port)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
