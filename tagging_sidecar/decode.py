"""Record value -> wire-format ``Tagging`` bytes, one function per input format.

The forwarder sends bytes, not message objects: for protobuf input the original bytes go out
unchanged after a validating parse, so no record is ever re-encoded on the hot path.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from google.protobuf import json_format
from google.protobuf.message import DecodeError as ProtobufDecodeError

from tagging_sidecar.config import InputFormat
from tagging_sidecar.contract.tagging.v1.tagging_pb2 import Tagging
from tagging_sidecar.errors import DecodeError

Decoder = Callable[[bytes | None], bytes]


def _require_id(message: Tagging) -> None:
    if not message.id:
        raise DecodeError("Tagging.id is empty; every record needs a unique id")


def decode_protobuf(value: bytes | None) -> bytes:
    """Validate a serialized ``Tagging`` and return the same bytes."""
    return _protobuf_decoder(sys.maxsize)(value)


def decode_json(value: bytes | None) -> bytes:
    """Parse the proto3 JSON form of a ``Tagging`` and return its wire bytes."""
    if not value:
        raise DecodeError("record value is empty")
    message = Tagging()
    try:
        json_format.Parse(value, message)
    except (json_format.ParseError, UnicodeDecodeError):
        # The parser's message can quote field values, which are payload: never pass it on.
        raise DecodeError("record value is not valid tagging.v1.Tagging JSON") from None
    _require_id(message)
    return message.SerializeToString()


def decoder_for(fmt: InputFormat, max_bytes: int) -> Decoder:
    """Return the decoder for ``fmt`` that also rejects results larger than ``max_bytes``.

    The protobuf decoder parses into a message it keeps for :data:`PARSES_PER_MESSAGE` records
    (parsing clears it first), which halves the cost of a fresh message per record; so a
    decoder belongs to one thread.
    """
    if fmt is InputFormat.PROTOBUF:
        return _protobuf_decoder(max_bytes)

    def decode(value: bytes | None) -> bytes:
        payload = decode_json(value)
        if len(payload) > max_bytes:
            raise DecodeError(f"record of {len(payload)} bytes exceeds the limit of {max_bytes}")
        return payload

    return decode


#: records parsed into one message before it is replaced: protobuf's upb runtime allocates from
#: an arena that clearing a message does not shrink, so a message reused forever would grow by
#: every record it ever parsed
PARSES_PER_MESSAGE = 1024


def _protobuf_decoder(max_bytes: int) -> Decoder:
    scratch = Tagging()
    parsed = 0

    def decode(value: bytes | None) -> bytes:
        nonlocal scratch, parsed
        if not value:
            raise DecodeError("record value is empty")
        if len(value) > max_bytes:
            raise DecodeError(f"record of {len(value)} bytes exceeds the limit of {max_bytes}")
        parsed += 1
        if parsed >= PARSES_PER_MESSAGE:
            scratch, parsed = Tagging(), 0
        try:
            scratch.ParseFromString(value)
        except ProtobufDecodeError:
            raise DecodeError("record value is not a serialized tagging.v1.Tagging") from None
        if not scratch.id:
            _require_id(scratch)  # raises, with the one wording of this error
        return value

    return decode
