"""Failover: kill -9 the leader under a steady write load and time what a user sees.

Per trial, on a fresh cluster: `--concurrency` writers put unique keys (majority acks, each operation
with a short deadline, retried on another node after a failure) for `--warmup` seconds; then the leader
is killed with SIGKILL. Measured:
- election: from the kill until the surviving nodes agree on a new leader;
- write outage: from the kill until the first acknowledgement of a write sent after it;
- the killed node is restarted `--down` seconds later; catch-up: from its restart until it has applied
  everything committed when it came back (process start-up included);
- lost: acknowledged writes missing from a linearizable read of every key at the end (must be 0).
The same is done against etcd when it is in `--systems`, with the same writers."""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .clusters import Cluster, RaftkvCluster
from .runner import finish, running_cluster
from .scale import _caught_up, _position, _table

PREFIX = b"failover/"


class Writers:
    """Bounded writers that survive a leader's death: each operation has a deadline, and a writer whose
    operation failed moves to the next endpoint (raftkv's client finds the leader itself)."""

    def __init__(self, cluster: Cluster, concurrency: int, op_timeout: float) -> None:
        self.cluster = cluster
        self.concurrency = concurrency
        self.op_timeout = op_timeout
        self.acked: list[tuple[float, float, bytes]] = []  # (monotonic time sent, time acknowledged, key)
        self.failures = 0
        self.stop_at = 0.0
        self._etcd: Any = None

    async def run(self, seconds: float, max_ops: int) -> None:
        self.stop_at = time.monotonic() + seconds
        budget = [max_ops]
        if isinstance(self.cluster, RaftkvCluster):
            from raftkv.client import AsyncClient

            async with AsyncClient(self.cluster.endpoints(), timeout=self.op_timeout) as client:
                await asyncio.gather(*(self._raftkv_writer(client, w, budget) for w in range(self.concurrency)))
        else:
            await asyncio.gather(*(self._etcd_writer(w, budget) for w in range(self.concurrency)))

    async def _raftkv_writer(self, client: Any, w: int, budget: list[int]) -> None:
        from raftkv.client import RaftKVError

        n = 0
        while time.monotonic() < self.stop_at and budget[0] > 0:
            budget[0] -= 1
            key = PREFIX + b"%d-%d" % (w, n)
            n += 1
            sent = time.monotonic()
            try:
                await client.put(key, b"v")
            except RaftKVError:
                self.failures += 1
                await asyncio.sleep(0.01)
                continue
            self.acked.append((sent, time.monotonic(), key))

    async def _etcd_writer(self, w: int, budget: list[int]) -> None:
        import grpc

        from raftkv.proto.etcd_stubs import rpc_pb2 as pb
        from raftkv.proto.etcd_stubs import rpc_pb2_grpc as pbg
        endpoints = self.cluster.endpoints()
        at = w % len(endpoints)
        channels: dict[str, Any] = {}
        n = 0
        try:
            while time.monotonic() < self.stop_at and budget[0] > 0:
                budget[0] -= 1
                key = PREFIX + b"%d-%d" % (w, n)
                n += 1
                ep = endpoints[at]
                ch = channels.get(ep) or channels.setdefault(ep, grpc.aio.insecure_channel(ep))
                sent = time.monotonic()
                try:
                    await pbg.KVStub(ch).Put(pb.PutRequest(key=key, value=b"v"), timeout=self.op_timeout)
                except grpc.RpcError:
                    self.failures += 1
                    at = (at + 1) % len(endpoints)  # any live etcd member forwards writes to its leader
                    await asyncio.sleep(0.01)
                    continue
                self.acked.append((sent, time.monotonic(), key))
        finally:
            for ch in channels.values():
                await ch.close()


def _read_back(cluster: Cluster) -> set[bytes]:
    """Every failover key, read linearizably."""
    end = PREFIX[:-1] + bytes([PREFIX[-1] + 1])
    if isinstance(cluster, RaftkvCluster):
        from raftkv.client import Client

        with Client(cluster.endpoints(), timeout=30) as c:
            return {kv.key for kv in c.range(PREFIX, end, keys_only=True, timeout=30).kvs}
    import grpc

    from raftkv.proto.etcd_stubs import rpc_pb2 as pb
    from raftkv.proto.etcd_stubs import rpc_pb2_grpc as pbg
    live = next(n.client_address for n in cluster.nodes.values() if n.alive())
    with grpc.insecure_channel(live, options=[("grpc.max_receive_message_length", 256 << 20)]) as ch:
        r = pbg.KVStub(ch).Range(pb.RangeRequest(key=PREFIX, range_end=end, keys_only=True), timeout=30)
    return {kv.key for kv in r.kvs}


def _agreed_new_leader(cluster: Cluster, old: int, deadline: float) -> float | None:
    """Poll until the survivors agree on a leader other than `old`; the monotonic time it was seen."""
    while time.monotonic() < deadline:
        try:
            if cluster.leader_id(timeout=0.5) != old:
                return time.monotonic()
        except RuntimeError:
            pass
        time.sleep(0.02)
    return None


def one_trial(system: str, root: Path, a: argparse.Namespace) -> dict[str, Any]:
    with running_cluster(system, root, a.nodes) as cluster:
        old = cluster.leader_id()
        writers = Writers(cluster, a.concurrency, a.op_timeout)
        total = a.warmup + a.down + a.after
        loop = asyncio.new_event_loop()
        t = threading.Thread(target=lambda: loop.run_until_complete(writers.run(total, a.max_ops)), daemon=True)
        t.start()
        time.sleep(a.warmup)
        t_kill = time.monotonic()
        cluster.stop_node(old, kill=True)
        t_elected = _agreed_new_leader(cluster, old, t_kill + 30)
        time.sleep(max(0.0, t_kill + a.down - time.monotonic()))
        target = _position(cluster, cluster.leader_id())
        t_restart = time.monotonic()
        cluster.start_node(old)
        while time.monotonic() < t_restart + 120 and not _caught_up(cluster, old, target):
            time.sleep(0.05)
        t_caught = time.monotonic() if _caught_up(cluster, old, target) else None
        t.join(total + 60)
        loop.close()
        # Writes sent after the kill: an earlier one may be answered late for a commit made before it.
        after = [at for sent, at, _ in writers.acked if sent > t_kill]
        stored = _read_back(cluster)
        acked = {k for _, _, k in writers.acked}
        return {"system": system, "nodes": a.nodes, "concurrency": a.concurrency,
                "acked": len(acked), "failed_attempts": writers.failures,
                "election_s": round(t_elected - t_kill, 3) if t_elected else None,
                "write_outage_s": round(min(after) - t_kill, 3) if after else None,
                "catchup_s": round(t_caught - t_restart, 3) if t_caught else None,
                "lost": len(acked - stored)}


def run_failover(doc: dict[str, Any], out: Path, a: argparse.Namespace) -> None:
    rows = doc.setdefault("failover", [])
    systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    for trial in range(a.trials):
        for system in systems:
            row = one_trial(system, out / "data" / f"failover-{system}-{trial}", a)
            row["trial"] = trial + 1
            rows.append(row)
            print(f"  failover {row}", file=sys.stderr, flush=True)
    doc.setdefault("sections", {})["Failover: kill -9 of the leader under writes"] = _table(rows, [
        ("system", "system"), ("trial", "trial"), ("writers", "concurrency"), ("acked writes", "acked"),
        ("failed attempts", "failed_attempts"), ("election s", "election_s"), ("write outage s", "write_outage_s"),
        ("restarted node catch-up s", "catchup_s"), ("acked writes lost", "lost")])
    finish(doc, out)


def add_parser(sub: Any, common: Any) -> None:
    fo = sub.add_parser("failover", help="kill -9 the leader under writes: election, outage, catch-up, losses")
    common(fo)
    fo.add_argument("--systems", default="raftkv,etcd")
    fo.add_argument("--trials", type=int, default=3)
    fo.add_argument("--concurrency", type=int, default=16)
    fo.add_argument("--warmup", type=float, default=3.0, help="seconds of writes before the kill")
    fo.add_argument("--down", type=float, default=3.0, help="seconds the killed node stays down")
    fo.add_argument("--after", type=float, default=3.0, help="seconds of writes after the restart")
    fo.add_argument("--op-timeout", type=float, default=2.0, help="deadline of one write")
