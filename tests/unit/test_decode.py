"""Record values -> Tagging wire bytes."""

from __future__ import annotations

import pytest
from google.protobuf import json_format
from hypothesis import given
from hypothesis import strategies as st

from tagging_sidecar.config import InputFormat
from tagging_sidecar.contract.tagging.v1.tagging_pb2 import Tagging
from tagging_sidecar.decode import decode_json, decode_protobuf, decoder_for
from tagging_sidecar.errors import DecodeError

from ..support.harness import python_output


def sample(record_id: str = "r-1") -> Tagging:
    record = Tagging(id=record_id, subject="user:1", metric="clicks", value=2.5)
    record.labels["region"] = "eu"
    record.tags.append("demo")
    record.event_time.FromSeconds(1_700_000_000)
    return record


def test_protobuf_passes_the_original_bytes_through() -> None:
    raw = sample().SerializeToString()
    assert decode_protobuf(raw) is raw


#: undecodable protobuf values and the words their error must contain
BAD_PROTOBUF = [
    (None, "empty"),
    (b"", "empty"),
    (b"\xff\xff\xff", "not a serialized"),
    (Tagging(subject="no id").SerializeToString(), "id is empty"),
]


def test_json_becomes_the_same_wire_bytes() -> None:
    record = sample()
    text = json_format.MessageToJson(record).encode()
    assert Tagging.FromString(decode_json(text)) == record


@pytest.mark.parametrize(("value", "message"), BAD_PROTOBUF)
def test_bad_protobuf_is_a_clear_error(value: bytes | None, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_protobuf(value)


@pytest.mark.parametrize(
    "value", [b"{not json", b'{"id": "x", "value": "many"}', b'{"id": 1, "nosuch": 2}', b"\xff"]
)
def test_bad_json_is_a_clear_error_without_the_payload(value: bytes) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_json(value)
    assert "many" not in str(caught.value)
    assert "nosuch" not in str(caught.value)


def test_size_limit_applies_to_the_forwarded_bytes() -> None:
    decode = decoder_for(InputFormat.PROTOBUF, max_bytes=80)
    big = sample()
    big.labels["pad"] = "x" * 100
    with pytest.raises(DecodeError, match="exceeds the limit of 80"):
        decode(big.SerializeToString())
    assert decode(sample().SerializeToString())


@pytest.mark.parametrize(("value", "message"), BAD_PROTOBUF)
def test_a_decoder_judges_each_record_on_its_own(value: bytes | None, message: str) -> None:
    # The protobuf decoder reuses one message: a good record before must not make a bad one pass.
    decode = decoder_for(InputFormat.PROTOBUF, max_bytes=1 << 20)
    good = sample().SerializeToString()
    assert decode(good) is good
    with pytest.raises(DecodeError, match=message):
        decode(value)
    assert decode(good) is good


@given(
    record_id=st.text(min_size=1, max_size=20),
    value=st.floats(allow_nan=False, allow_infinity=False),
    labels=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4),
)
def test_json_and_protobuf_agree(record_id: str, value: float, labels: dict[str, str]) -> None:
    record = Tagging(id=record_id, value=value, labels=labels)
    from_json = decode_json(json_format.MessageToJson(record).encode())
    from_proto = decode_protobuf(record.SerializeToString())
    assert Tagging.FromString(from_json) == Tagging.FromString(from_proto) == record


def test_decoding_many_records_does_not_grow_memory() -> None:
    # Reusing one parsed message forever grew by every record it parsed (protobuf's arena is
    # never shrunk): 500,000 records of ~200 bytes took 270 MiB. In a process of its own, so
    # that the peak resident size is this test's.
    probe = (
        "import resource\n"
        "from tagging_sidecar.config import InputFormat\n"
        "from tagging_sidecar.decode import decoder_for\n"
        "from tagging_sidecar.produce import make_record\n"
        "value = make_record('r', 1, payload_pad=90).SerializeToString()\n"
        "decode = decoder_for(InputFormat.PROTOBUF, 1 << 20)\n"
        "decode(value)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for _ in range(500_000):\n"
        "    decode(value)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    grown = python_output(probe, timeout=120)
    assert int(grown) < 32, f"decoding grew the process by {grown.strip()} MiB"
