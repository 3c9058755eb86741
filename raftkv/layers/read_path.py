"""The read-consistency policy: what each level waits for on this node before the read is served, or
that it must go to the leader. It uses the host's primitives (`linearizable_barrier`, `wait_applied`,
`lease_valid`, `staleness_proof`) and the read itself then goes through the host (`NodeHost.read`).
No gRPC here: a refusal is a `ReadRefused` the api turns into a status."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..core import CompactedError
from ..server.host import NodeHost
from .reads import ReadLevel, StalenessBound, satisfies
from .session import SessionToken


class ForwardToLeader(Exception):
    """This node cannot serve the read as asked; the leader can."""


class ReadRefused(Exception):
    """The read can never be served as asked on this node (FAILED_PRECONDITION); `reason` names why."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class ReadPoint:
    level: ReadLevel
    staleness_bound_ms: float = 0.0


def check_token_term(host: NodeHost, tok: SessionToken) -> None:
    """The token's index is applied here, so committed: the log's term there is final."""
    log = host.node.raft_log
    try:
        log_term: int | None = log.term(tok.index)
    except CompactedError:
        log_term = None
    tok.check_term(log_term, log.term_or_zero(log.first_index() - 1))


async def prepare_read(host: NodeHost, level: ReadLevel, bound: StalenessBound | None, token: bytes,
                       cluster_id: bytes) -> ReadPoint:
    """Wait until this node may serve the read; returns the level actually achieved."""
    cfg = host.cfg
    if host.node.is_witness():
        raise ForwardToLeader()  # a witness holds no data: not even a serializable read is served here
    # Whatever the level, a read on this node sees every write this node has already answered: a writer
    # is answered once its entry is applied into the store's write-back buffer, which reads see first.
    if level == ReadLevel.SERIALIZABLE:
        return ReadPoint(level)
    if level == ReadLevel.LEASE:
        if host.lease_valid():
            return ReadPoint(ReadLevel.LEASE)
        if not cfg.lease_reads:
            raise ReadRefused("lease reads are disabled on this cluster (start nodes with --lease-reads)",
                              "LEASE_READS_DISABLED")
        if not host.is_leader:
            raise ForwardToLeader()
        await host.linearizable_barrier()  # the lease lapsed: fall back to a quorum round
        return ReadPoint(ReadLevel.LINEARIZABLE)
    if level == ReadLevel.LINEARIZABLE:
        await host.linearizable_barrier()
        return ReadPoint(level)
    if level == ReadLevel.SESSION:
        tok = SessionToken.decode(token, cluster_id)
        if host.is_leader:
            tok.check_ahead(host.last_index())
        try:
            await asyncio.wait_for(host.wait_applied(tok.index), cfg.read_wait_ms / 1000)
        except TimeoutError:
            if host.is_leader:
                tok.check_ahead(host.last_index())
                await host.wait_applied(tok.index)
            else:
                raise ForwardToLeader() from None
        check_token_term(host, tok)
        return ReadPoint(level)
    assert bound is not None
    election_ms = cfg.election_ticks * cfg.tick_ms
    now = host.clock.monotonic
    deadline = now() + cfg.read_wait_ms / 1000
    while True:
        proof = host.staleness_proof()
        if satisfies(proof, bound, election_ms):
            return ReadPoint(level, proof.staleness_ms or 0.0)
        if host.is_leader:
            await host.linearizable_barrier()
            return ReadPoint(level, 0.0)
        if now() >= deadline:
            break
        await asyncio.sleep(cfg.tick_ms / 1000)
    if bound.strict:
        got = "nothing provable" if proof.staleness_ms is None else f"{proof.staleness_ms:.0f} ms"
        raise ReadRefused(f"node {cfg.id} cannot prove its data is within the staleness bound (it can prove {got})",
                          "STALENESS_BOUND_NOT_MET")
    raise ForwardToLeader()
