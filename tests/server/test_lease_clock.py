"""The leader's lease and staleness proof on the host's monotonic clock (server/lease_clock.py), and the
host that drives it: after its loop stood still (a pause, a stall), a leader claims neither a lease nor
a fresh state until it has confirmed a round of heartbeats sent after it resumed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftkv.core.rounds import ConfirmedRound
from raftkv.server.config import ServerConfig
from raftkv.server.host import NodeHost, bootstrap_store
from raftkv.server.lease_clock import MAX_ROUNDS, LeaseClock, lease_seconds
from raftkv.server.metrics import Metrics
from raftkv.storage import LmdbNodeStore, cluster_id_for
from raftkv.transport import Transport

MS = 1_000_000
T0 = 1_000_000 * MS


def test_the_lease_runs_from_the_send_time_of_the_confirmed_round() -> None:
    clock = LeaseClock(0.140)
    clock.note_sent((2, 1), T0)
    rnd = ConfirmedRound(term=2, number=1, commit=10)
    assert clock.lease_valid(rnd, applied=10, now_ns=T0)
    assert clock.lease_valid(rnd, applied=10, now_ns=T0 + 139 * MS)
    assert not clock.lease_valid(rnd, applied=10, now_ns=T0 + 140 * MS)
    assert not clock.lease_valid(rnd, applied=9, now_ns=T0 + 1 * MS)  # the round's commit not yet applied
    assert not clock.lease_valid(None, applied=10, now_ns=T0)
    proof = clock.proof(rnd, applied=10, now_ns=T0 + 2_000 * MS)  # however long ago, the age is measured
    assert proof.staleness_ms == pytest.approx(2000.0) and proof.lag_entries == 0
    assert clock.proof(rnd, applied=7, now_ns=T0 + MS).staleness_ms is None


def test_rounds_sent_together_share_their_send_time_and_older_ones_prove_nothing() -> None:
    clock = LeaseClock(0.1)
    clock.note_sent((3, 2), T0)
    clock.note_sent((3, 5), T0 + 50 * MS)  # rounds 3, 4 and 5 left in one Ready
    assert clock.sent_at(ConfirmedRound(3, 4, 1)) == T0 + 50 * MS
    assert clock.sent_at(ConfirmedRound(3, 5, 1)) == T0 + 50 * MS
    assert clock.sent_at(ConfirmedRound(3, 2, 1)) is None  # passed over already: never a later time
    assert clock.sent_at(ConfirmedRound(3, 6, 1)) is None  # not sent yet
    clock.note_sent((4, 1), T0 + 60 * MS)  # a new leadership numbers its rounds from 1 again
    assert clock.sent_at(ConfirmedRound(4, 1, 1)) == T0 + 60 * MS


def test_a_clock_that_goes_back_forgets_every_send_time() -> None:
    clock = LeaseClock(0.140)
    clock.note_sent((2, 1), T0)
    rnd = ConfirmedRound(2, 1, 5)
    # 30 s back: "now" is before the send time, and would look like a lease with 30 s to run.
    assert not clock.lease_valid(rnd, 5, T0 - 30_000 * MS)
    assert clock.proof(rnd, 5, T0 - 30_000 * MS).staleness_ms is None
    # A small step back that leaves "now" after the send time is caught too, from the clock's history.
    clock.note_sent((2, 2), T0 + 100 * MS)
    assert not clock.lease_valid(ConfirmedRound(2, 2, 5), 5, T0 + 90 * MS)
    assert clock.clock_steps_back == 2
    # Rounds sent after the step are timed on the clock as it now reads.
    clock.note_sent((2, 3), T0 + 95 * MS)
    assert clock.lease_valid(ConfirmedRound(2, 3, 5), 5, T0 + 100 * MS)


def test_forgotten_rounds_prove_nothing() -> None:
    clock = LeaseClock(0.1)
    for n in range(1, MAX_ROUNDS + 11):
        clock.note_sent((2, n), T0 + n)
    assert clock.sent_at(ConfirmedRound(2, 10, 0)) is None
    assert clock.sent_at(ConfirmedRound(2, MAX_ROUNDS + 10, 0)) == T0 + MAX_ROUNDS + 10


def test_lease_length_leaves_the_drift_margin_and_one_tick_of_timer_phase() -> None:
    assert lease_seconds(tick_ms=50, election_ticks=10, drift_ticks=2) == pytest.approx(0.35)
    assert lease_seconds(tick_ms=20, election_ticks=10, drift_ticks=9) <= 0
    assert not LeaseClock(0.0).lease_valid(ConfirmedRound(1, 1, 0), 0, T0)


# -------------------------------------------------------------------------------------------------
# The host: a real one-node NodeHost on a real LMDB store, its event loop made to stand still.

PEERS = {1: "127.0.0.1:1"}  # never dialled: a one-node cluster has no peers


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LmdbNodeStore]:
    s = LmdbNodeStore(tmp_path, 1, cluster_id_for(PEERS), map_size=64 << 20)
    yield s
    s.close()


async def _leader(store: LmdbNodeStore, lease_reads: bool) -> NodeHost:
    cfg = ServerConfig(id=1, data_dir=str(store.path), peers=PEERS, tick_ms=10, lease_reads=lease_reads)
    bootstrap_store(store, cfg)
    transport = Transport(1, PEERS[1], lambda: store.cluster_id, on_message=lambda m: None,
                          on_unreachable=lambda nid: None, adopt_cluster_id=store.adopt_cluster_id)
    host = NodeHost(cfg, store, transport, Metrics(1), seed=1)
    await host.start()
    for _ in range(500):
        if host.is_leader and host.node.confirmed_round() is not None:
            return host
        await asyncio.sleep(0.01)
    raise AssertionError("a one-node cluster did not elect itself")


async def _until(cond, what: str, timeout: float = 5.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("lease_reads", [True, False], ids=["lease-reads", "no-lease-reads"])
def test_after_the_loop_stood_still_the_leader_proves_nothing_until_it_confirms_a_new_round(
        store: LmdbNodeStore, lease_reads: bool) -> None:
    async def main() -> None:
        host = await _leader(store, lease_reads)
        try:
            await _until(lambda: (host.staleness_proof().staleness_ms or 1e9) < 50, "a fresh proof")
            assert host.lease_valid() is lease_reads
            ticks = host.node.raft.ticks
            time.sleep(1.0)  # the loop stands still, as under SIGSTOP: no ticks, no rounds
            # Whatever ran first after the stall (here: this very coroutine) sees the real age.
            assert not host.lease_valid()
            proof = host.staleness_proof()
            assert proof.staleness_ms is not None and proof.staleness_ms >= 1000.0
            # The overdue tick timer fires once: the core is not handed the 100 ticks it missed at once.
            await asyncio.sleep(0.03)
            assert host.node.raft.ticks - ticks <= 5
            # A round sent after the stall is confirmed (alone) and proves freshness again.
            await _until(lambda: (host.staleness_proof().staleness_ms or 1e9) < 50, "a fresh proof again")
            assert host.lease_valid() is lease_reads
        finally:
            await host.stop()

    asyncio.run(main())
