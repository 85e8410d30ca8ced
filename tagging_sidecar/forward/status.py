"""What a gRPC status code means for the records of the call that got it.

After the uForwarder contract, with one difference that matters on a client stream: a status
ends the whole stream, so ``ALREADY_EXISTS`` only says that *some* record of the call is already
stored. A server that aborts at that record stored nothing after it, so a call of several
records answered ``ALREADY_EXISTS`` is isolated record by record, and only a single record
answered ``ALREADY_EXISTS`` counts as delivered.
"""

from __future__ import annotations

from enum import Enum

import grpc


class Outcome(Enum):
    """What a status code means for the batch that got it."""

    DELIVERED = "delivered"
    RETRY = "retry"
    REJECT = "reject"
    ISOLATE = "isolate"


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
    if code is grpc.StatusCode.OK:
        return Outcome.DELIVERED
    if code is grpc.StatusCode.ALREADY_EXISTS:
        return Outcome.ISOLATE
    if code in _RETRY:
        return Outcome.RETRY
    # INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE, NOT_FOUND, DATA_LOSS: the records
    # themselves are the problem; sending them again changes nothing.
    return Outcome.REJECT
