"""Which gRPC status codes are worth a retry (after the uForwarder contract)."""

from __future__ import annotations

from enum import Enum

import grpc


class Outcome(Enum):
    """What a status code means for the batch that got it."""

    DELIVERED = "delivered"
    RETRY = "retry"
    REJECT = "reject"


_RETRY = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    # Credentials may be rotated; failing over to the dead-letter topic would be worse.
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNIMPLEMENTED,
}


def classify(code: grpc.StatusCode) -> Outcome:
    """Map a final status code to what the forwarder does with the batch."""
    if code in (grpc.StatusCode.OK, grpc.StatusCode.ALREADY_EXISTS):
        return Outcome.DELIVERED
    if code in _RETRY:
        return Outcome.RETRY
    # INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE, NOT_FOUND, DATA_LOSS: the records
    # themselves are the problem; sending them again changes nothing.
    return Outcome.REJECT
