"""Where the client goes next after an answer that is not a result."""

from __future__ import annotations

import grpc

from raftkv.client.errors import NotLeaderError
from raftkv.client.policy import Endpoints


def not_leader(leader_address: str = "") -> NotLeaderError:
    meta = {"leader_address": leader_address} if leader_address else {}
    return NotLeaderError("not the leader", grpc.StatusCode.UNAVAILABLE, "NOT_LEADER", meta)


def test_named_leader_is_preferred_and_learned() -> None:
    eps = Endpoints(["a:1", "b:1"])
    eps.note_leader("a:1", not_leader("c:1"))
    assert eps.pick(prefer_leader=True) == "c:1"
    assert "c:1" in eps.addresses


def test_node_without_a_leader_is_left_for_the_next_endpoint() -> None:
    # A removed node never learns of a leader again: asking it again and again would spin until the deadline.
    eps = Endpoints(["a:1", "b:1", "c:1"])
    assert eps.pick(prefer_leader=True) == "a:1"
    eps.note_leader("a:1", not_leader())
    assert eps.pick(prefer_leader=True) == "b:1"


def test_stale_leader_naming_itself_is_dropped() -> None:
    eps = Endpoints(["a:1", "b:1"])
    eps.note_leader("a:1", not_leader("b:1"))
    assert eps.pick(prefer_leader=True) == "b:1"
    eps.note_leader("b:1", not_leader("b:1"))
    assert eps.leader is None


def test_writes_are_retried_only_when_the_request_never_left() -> None:
    from raftkv.client.errors import UnavailableError
    from raftkv.client.policy import retryable

    never_connected = UnavailableError("10.0.0.1:7001: failed to connect to all addresses; last error: "
                                       "Connection refused", grpc.StatusCode.UNAVAILABLE)
    broke_mid_call = UnavailableError("10.0.0.1:7001: Socket closed", grpc.StatusCode.UNAVAILABLE)
    assert retryable(never_connected, "write") and retryable(never_connected, "read")
    assert not retryable(broke_mid_call, "write")  # the server may have received it
    assert retryable(broke_mid_call, "read")  # reads change nothing
    assert not retryable(never_connected, "txn") and not retryable(broke_mid_call, "txn")
    assert retryable(not_leader("b:1"), "txn")  # refused before proposing: safe for anything


def test_a_write_cut_off_after_it_was_proposed_is_not_retried() -> None:
    """A node that stops with a write already in its log answers OutcomeUnknown: it may still commit
    under another leader, so the client reports it instead of sending a second copy."""
    from raftkv.api.errors import classify
    from raftkv.client.errors import RaftKVError
    from raftkv.client.policy import retryable
    from raftkv.server.errors import OutcomeUnknown, ShuttingDown

    for host_error, safe in ((ShuttingDown("node is shutting down"), True),
                             (OutcomeUnknown("node is shutting down; the write was already proposed"), False)):
        status = classify(host_error)
        err = RaftKVError(str(status), status.code, status.reason)
        assert status.code == grpc.StatusCode.UNAVAILABLE
        assert retryable(err, "write") is safe and retryable(err, "txn") is safe
