"""Simulated clients: each writes at the ack levels and reads at the read levels its seed drew, through
the real policies (layers/acks.py, layers/read_path.py) on whichever node it picks, carries a session
token from reply to reply, and records every operation in the run's history (history.py)."""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

from ..layers.acks import AckLevel, AckRequest
from ..layers.read_path import ForwardToLeader, prepare_read
from ..layers.reads import ReadLevel, StalenessBound
from ..layers.session import SessionToken, newest
from ..storage.commands import Put, encode
from .history import Op
from .world import CLUSTER_ID

if TYPE_CHECKING:
    from .host_run import HostCluster


class _Done:
    """What a client learns from a reply for its session token."""

    __slots__ = ("ok", "index_seen", "term_seen")

    def __init__(self) -> None:
        self.ok = False
        self.index_seen = 0
        self.term_seen = 0

    def set(self, ok: bool, index: int, term: int) -> None:
        self.ok, self.index_seen, self.term_seen = ok, index, term


async def run_client(c: HostCluster, cid: int, seed: int) -> None:
    rng = random.Random(seed)
    sw = c.swarm
    token: SessionToken | None = None
    n = 0
    while not c.stopping:
        await asyncio.sleep(rng.uniform(0.0005, 0.02))
        key = b"k%d" % rng.randrange(c.opts.keys)
        if rng.random() < 0.5:
            n += 1
            done = await _write(c, cid, key, b"c%d-%d" % (cid, n), rng.choice(sw.write_levels), rng)
        else:
            done = await _read(c, cid, key, rng.choice(sw.read_levels), token, rng)
        if done.ok and done.index_seen:
            token = newest(token, SessionToken(index=done.index_seen, term=done.term_seen))


async def run_pipelined_client(c: HostCluster, cid: int, seed: int, window: int = 16) -> None:
    """A client that does not wait for one write before sending the next (up to `window` in flight), at
    the `leader` level, to whichever node believes it leads: each leader, even one about to be cut off
    or to crash, builds a tail of entries of its own term -- the divergent logs of the paper's Figure 8."""
    rng = random.Random(seed)
    in_flight: set[asyncio.Task[_Done]] = set()
    n = 0
    while not c.stopping:
        await asyncio.sleep(rng.uniform(0.0002, 0.002))
        if len(in_flight) >= window:
            continue
        n += 1
        key = b"k%d" % rng.randrange(c.opts.keys)
        task = asyncio.ensure_future(_write(c, cid, key, b"c%d-%d" % (cid, n), "leader", rng))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight, return_exceptions=True)


async def _write(c: HostCluster, cid: int, key: bytes, value: bytes, level: str, rng: random.Random) -> _Done:
    op = c.history.add(Op(cid, "write", key, level, c.loop.time(), value=value))
    ack = AckRequest(AckLevel(level), min_replicas=1, timeout_ms=rng.choice([20, 100]))
    # Any node that believes it leads, as a client whose idea of the leader may be stale: a leader cut off
    # from the others keeps taking writes (leader-level ones are answered) until it learns better.
    leaders = [n for n in c.up() if n.host is not None and n.host.is_leader]
    target = rng.choice(leaders) if leaders else rng.choice(c.up() or list(c.nodes.values()))
    done = _Done()
    try:
        if target.host is None:
            raise ConnectionError("node down")
        op.node = target.id
        out = await asyncio.wait_for(c.policies[target.id].write(encode(Put(key, value)), ack,
                                                                 needs_result=level != "leader"), 1.0)
        op.ok, op.revision = True, out.index
        done.set(True, out.index, out.term)
        if out.ack.degraded:
            op.level = "majority"  # answered DEGRADED: it promises what a majority write does
        if level == "leader":
            op.level = "leader"
    except Exception as e:  # noqa: BLE001 - any failure: the write may or may not have happened
        op.error = type(e).__name__
    op.completed = c.loop.time()
    return done


async def _read(c: HostCluster, cid: int, key: bytes, level: str, token: SessionToken | None,
                rng: random.Random) -> _Done:
    op = c.history.add(Op(cid, "read", key, level, c.loop.time()))
    done = _Done()
    bound = None
    if level == "bounded_staleness":
        bound = StalenessBound(max_staleness_ms=rng.choice([20, 100, 500]), strict=rng.random() < 0.5)
        op.bound_ms = float(bound.max_staleness_ms or 0)
    tok = token.encode(CLUSTER_ID) if token is not None and level == "session" else b""
    if level == "session" and token is None:
        op.level = level = "serializable"
    target = rng.choice(c.up() or list(c.nodes.values()))
    try:
        for _ in range(3):
            if target.host is None:
                raise ConnectionError("node down")
            host = target.host
            try:
                await asyncio.wait_for(prepare_read(host, ReadLevel(level), bound, tok, CLUSTER_ID), 1.0)
            except ForwardToLeader:
                target = c.leader() or target  # as the api forwards to the leader it knows
                continue
            op.node = target.id
            kv, applied = host.read(lambda s: s.get_at(key))
            op.ok = True
            op.revision = kv.mod_revision if kv is not None else 0
            op.value = kv.value if kv is not None else b""
            done.set(True, applied, host.node.raft_log.term_or_zero(applied))
            break
    except Exception as e:  # noqa: BLE001 - a failed read promises nothing
        op.error = type(e).__name__
    op.completed = c.loop.time()
    return done
