"""TaggingBatch built from record bytes, and the status-code contract."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tagging_sidecar.contract.tagging.v1.tagging_pb2 import Tagging, TaggingBatch
from tagging_sidecar.forward.status import Outcome, classify
from tagging_sidecar.forward.wire import batch_messages


@given(
    ids=st.lists(st.text(min_size=1, max_size=300), min_size=1, max_size=40),
    max_bytes=st.integers(min_value=64, max_value=4096),
)
def test_batches_decode_to_the_same_records_in_order(ids: list[str], max_bytes: int) -> None:
    payloads = [Tagging(id=i).SerializeToString() for i in ids]
    messages = list(batch_messages(payloads, max_bytes))
    decoded = [r.id for m in messages for r in TaggingBatch.FromString(m).records]
    assert decoded == ids
    for message in messages:
        assert len(message) <= max_bytes or len(TaggingBatch.FromString(message).records) == 1


def _record_of(size: int) -> Tagging:
    """A record whose wire form is exactly ``size`` bytes long."""
    for padding in range(size, -1, -1):
        record = Tagging(id="r", source="s" * padding)
        if record.ByteSize() == size:
            return record
    raise AssertionError(f"no record of {size} bytes")


@pytest.mark.parametrize(
    "size",
    # each side of the lengths whose varint grows a byte (the headers up to 16 KiB are tabled)
    [6, 127, 128, 16_383, 16_384, 70_000],
)
def test_a_batch_is_what_protobuf_itself_would_encode(size: int) -> None:
    records = [_record_of(size), Tagging(id="small", value=1.5), _record_of(size)]
    (message,) = batch_messages([r.SerializeToString() for r in records], 1 << 20)
    assert message == TaggingBatch(records=records).SerializeToString()


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (grpc.StatusCode.OK, Outcome.DELIVERED),
        (grpc.StatusCode.ALREADY_EXISTS, Outcome.ISOLATE),
        (grpc.StatusCode.UNAVAILABLE, Outcome.RETRY),
        (grpc.StatusCode.DEADLINE_EXCEEDED, Outcome.RETRY),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, Outcome.RETRY),
        (grpc.StatusCode.INVALID_ARGUMENT, Outcome.REJECT),
        (grpc.StatusCode.FAILED_PRECONDITION, Outcome.REJECT),
        (grpc.StatusCode.OUT_OF_RANGE, Outcome.REJECT),
    ],
)
def test_status_codes_follow_the_contract(code: grpc.StatusCode, outcome: Outcome) -> None:
    assert classify(code) is outcome
