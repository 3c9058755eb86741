"""Reply building shared by KV and KV.Batch: the meta every write and read reply carries (index, term,
the level achieved, the session token, who served it) and the read replies themselves, whose data is
read through the host (`NodeHost.read`) once the read policy has said this node may answer. Both
services hold one `Replies`; neither imports the other."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..layers.acks import AckLevel, WriteOutcome
from ..layers.admission import Admission
from ..layers.read_path import ReadPoint
from ..layers.session import SessionToken
from ..proto.stubs import kv_pb2 as pb
from ..server.host import NodeHost
from ..storage.commands import Range
from .convert import ACK_TO_PB, READ_TO_PB, kv_to_pb, range_to_pb

RANGE_THREADS = 2
"""Range scans run on this many threads, never on the event loop: a scan of many keys (counting every
match, as etcd does) would stall the host loop and its heartbeats. More ranges at once wait their turn."""


class Replies:
    def __init__(self, host: NodeHost, cluster_id: Callable[[], bytes]) -> None:
        self.host = host
        self.cluster_id = cluster_id
        self._admission = Admission.of(host)
        self._term_at = (-1, 0)
        self._scans = ThreadPoolExecutor(max_workers=RANGE_THREADS, thread_name_prefix=f"raftkv-range-{host.cfg.id}")

    def close(self) -> None:
        """Wait for running scans before the store closes under them."""
        self._scans.shutdown(wait=True, cancel_futures=True)

    def token(self, index: int, term: int | None = None) -> bytes:
        """A session token names an entry: its index and the term of the entry there (checked by the node
        that serves the token, see `check_token_term`)."""
        if term is None:
            cached_index, term = self._term_at
            if cached_index != index:  # reads between writes share one applied index: one log lookup
                term = self.host.node.raft_log.term_or_zero(index)
                self._term_at = (index, term)
        return SessionToken(index=index, term=term).encode(self.cluster_id())

    def write_meta(self, out: WriteOutcome) -> pb.WriteMeta:
        return pb.WriteMeta(index=out.index, term=out.term, ack_achieved=ACK_TO_PB[out.ack.level],
                            degraded=out.ack.degraded, confirmed_by=out.ack.confirmed_by,
                            commit_latency_us=int(out.latency_s * 1e6), session_token=self.token(out.index, out.term),
                            served_by=self.host.cfg.id, may_be_lost=out.ack.level == AckLevel.LEADER,
                            pressure=self._admission.level.name)

    def read_meta(self, point: ReadPoint, applied: int) -> pb.ReadMeta:
        return pb.ReadMeta(served_by=self.host.cfg.id, applied_index=applied,
                           consistency_achieved=READ_TO_PB[point.level],
                           staleness_bound_ms=point.staleness_bound_ms, session_token=self.token(applied),
                           pressure=self._admission.level.name)

    def get(self, key: bytes, point: ReadPoint) -> pb.GetResponse:
        kv, applied = self.host.read(lambda s: s.get_at(key))
        reply = pb.GetResponse(found=kv is not None, meta=self.read_meta(point, applied))
        if kv is not None:
            reply.kv.CopyFrom(kv_to_pb(kv))
        return reply

    async def range(self, op: Range, point: ReadPoint) -> pb.RangeResponse:
        """Scan and build the reply on a scan thread, bounded by --max-range-keys (in `op.limit`) and
        --max-range-bytes; with the applied index of the state scanned."""
        limit_bytes = self.host.cfg.max_range_bytes

        def scan() -> tuple[pb.RangeResponse, int]:
            result, applied = self.host.read(lambda s: s.range_at(op, limit_bytes))
            return range_to_pb(result), applied

        reply, applied = await asyncio.get_running_loop().run_in_executor(self._scans, scan)
        reply.meta.CopyFrom(self.read_meta(point, applied))
        return reply
