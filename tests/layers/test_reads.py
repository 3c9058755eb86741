"""Staleness proofs and the bound check (layers/reads.py): what a node may claim from its own clock."""

from __future__ import annotations

import pytest

from raftkv.layers.reads import StalenessBound, StalenessProof, prove_staleness, satisfies

NOW = 50_000_000_000  # ns on the node's monotonic clock
MS = 1_000_000


def test_age_is_measured_from_the_stamp_on_the_nodes_own_clock() -> None:
    proof = prove_staleness((NOW - 120 * MS, 7), applied=7, now_ns=NOW)
    assert proof == StalenessProof(pytest.approx(120.0), 0, pytest.approx(120.0))
    assert satisfies(proof, StalenessBound(max_staleness_ms=120), 1000)
    assert not satisfies(proof, StalenessBound(max_staleness_ms=119), 1000)


def test_a_clock_that_went_back_proves_nothing() -> None:
    """A follower's monotonic clock stepped back 30 s while it was cut off: "now" reads earlier than the
    stamp it sent. That is no evidence of freshness; the data may be arbitrarily old."""
    stamp = NOW + 30_000 * MS
    proof = prove_staleness((stamp, 431), applied=431, now_ns=NOW)
    assert proof.staleness_ms is None
    assert proof.confirmation_age_ms is None
    for bound in (StalenessBound(max_staleness_ms=200, strict=True), StalenessBound(max_staleness_ms=10**9),
                  StalenessBound(max_lag_entries=0), StalenessBound(max_lag_entries=10**9)):
        assert not satisfies(proof, bound, max_confirmation_age_ms=10**9), bound


def test_a_stamp_of_exactly_now_is_zero_old() -> None:
    proof = prove_staleness((NOW, 3), applied=5, now_ns=NOW)
    assert proof.staleness_ms == 0.0 and proof.lag_entries == 0 and proof.confirmation_age_ms == 0.0


def test_behind_the_echoed_commit_proves_no_age_but_reports_the_lag() -> None:
    proof = prove_staleness((NOW - 10 * MS, 50), applied=45, now_ns=NOW)
    assert proof.staleness_ms is None and proof.lag_entries == 5
    assert satisfies(proof, StalenessBound(max_lag_entries=5), 1000)
    assert not satisfies(proof, StalenessBound(max_lag_entries=5), 5)  # the confirmation itself is too old


def test_no_confirmation_proves_nothing() -> None:
    assert prove_staleness(None, 10, NOW) == StalenessProof(None, None, None)
