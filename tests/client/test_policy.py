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


def test_a_write_whose_answer_was_lost_after_sending_is_outcome_unknown() -> None:
    from raftkv.client.errors import (
        DeadlineError,
        OutcomeUnknownError,
        RaftKVError,
        UnavailableError,
    )
    from raftkv.client.policy import Attempts

    lost = {
        "deadline": RaftKVError("Deadline Exceeded", grpc.StatusCode.DEADLINE_EXCEEDED),
        "server deadline": RaftKVError("deadline exceeded", grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE"),
        "socket": RaftKVError("Socket closed", grpc.StatusCode.UNAVAILABLE),
        "stopped with it in the log": RaftKVError("node stopped", grpc.StatusCode.UNAVAILABLE, "OUTCOMEUNKNOWN"),
    }
    for name, err in lost.items():
        for kind in ("write", "txn"):
            attempts = Attempts(Endpoints(["a:1", "b:1"]), kind, False, 5.0, None)
            try:
                attempts.failed("a:1", err)
            except OutcomeUnknownError as e:
                assert e.address == "a:1" and "may or may not have been applied" in str(e), name
                assert isinstance(e, DeadlineError if err.code == grpc.StatusCode.DEADLINE_EXCEEDED
                                  else UnavailableError), name
            else:
                raise AssertionError(f"{name}: {kind} was retried")
    # A read has no outcome to be unsure of, and a write refused before proposing is simply retried.
    assert Attempts(Endpoints(["a:1", "b:1"]), "read", False, 5.0, None).failed("a:1", lost["socket"]) >= 0
    assert Attempts(Endpoints(["a:1", "b:1"]), "write", False, 5.0, None).failed("a:1", not_leader("b:1")) >= 0


def test_a_connection_that_never_got_ready_moves_on_and_says_nothing_was_sent() -> None:
    from raftkv.client.errors import DeadlineError
    from raftkv.client.policy import Attempts

    eps = Endpoints(["hung:1", "b:1"])
    attempts = Attempts(eps, "write", False, 0.05, None, connect_timeout=0.01)
    address, budget = attempts.next()
    assert (address, budget) == ("hung:1", 0.01)
    assert attempts.not_connected(address, budget) == 0.0
    assert attempts.next()[0] == "b:1"  # the next try goes elsewhere at once
    import time

    time.sleep(0.06)
    try:
        attempts.next()
    except DeadlineError as e:
        assert "the write was not sent, so it was not applied" in str(e) and "hung:1" in str(e)
    else:
        raise AssertionError("no deadline")
