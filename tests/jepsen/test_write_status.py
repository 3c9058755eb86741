"""How the partition suite's workloads record a failed write: certain failures as "fail", the rest as
"info" (indeterminate). A refusal counted as "fail" that might have been applied would let the checkers
pass a lost or duplicated write; a certain refusal counted as "info" makes the search explode."""

import grpc

from raftkv.client.errors import OutcomeUnknownUnavailableError, error_from_status

from .workloads import write_status


def _status(code: grpc.StatusCode, reason: str) -> str:
    return write_status(error_from_status(code, "refused", reason, {}))


def test_refusals_made_before_proposing_are_certain_failures() -> None:
    assert _status(grpc.StatusCode.RESOURCE_EXHAUSTED, "NOSPACE") == "fail"
    assert _status(grpc.StatusCode.RESOURCE_EXHAUSTED, "REQUEST_TOO_LARGE") == "fail"
    assert _status(grpc.StatusCode.INVALID_ARGUMENT, "") == "fail"


def test_errors_that_may_follow_a_proposal_stay_indeterminate() -> None:
    assert _status(grpc.StatusCode.UNAVAILABLE, "") == "info"
    assert _status(grpc.StatusCode.DEADLINE_EXCEEDED, "") == "info"
    assert _status(grpc.StatusCode.RESOURCE_EXHAUSTED, "") == "info"  # e.g. a gRPC quota, not raftkv's
    unknown = OutcomeUnknownUnavailableError("connection broke after sending", grpc.StatusCode.UNAVAILABLE,
                                             "NOSPACE")
    assert write_status(unknown) == "info"
