"""Build ``TaggingBatch`` stream messages from record bytes without re-encoding the records.

``TaggingBatch.records`` is field 1, length-delimited: its wire form is, per record, the tag byte
``0x0A``, the record's length as a varint, then the record's bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

_RECORDS_TAG = b"\x0a"


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


#: the header of every record shorter than 16 KiB (a length of one or two varint bytes), built
#: once (about 0.7 MB): encoding the varint of each record took two thirds of building a batch
_HEADERS = [_RECORDS_TAG + _varint(n) for n in range(1 << 14)]
_TABLED = len(_HEADERS)


def batch_messages(payloads: Sequence[bytes], max_bytes: int) -> Iterator[bytes]:
    """Yield serialized ``TaggingBatch`` messages, each at most ``max_bytes`` long.

    A single record larger than ``max_bytes`` still gets a message of its own; callers reject such
    records before they get here (the server would refuse it).
    """
    parts: list[bytes] = []
    size = 0
    headers = _HEADERS
    for payload in payloads:
        length = len(payload)
        header = headers[length] if length < _TABLED else _RECORDS_TAG + _varint(length)
        grow = len(header) + length
        if parts and size + grow > max_bytes:
            yield b"".join(parts)
            parts = []
            size = 0
        parts.append(header)
        parts.append(payload)
        size += grow
    if parts:
        yield b"".join(parts)
