"""The offsets above a committed position that are already done, as Kafka commit metadata.

A partition can only commit its lowest offset not yet done; the records above it that were
already delivered would be delivered again by the next owner after a crash. This packs them into
the metadata string committed with the offset (the broker keeps ``offset.metadata.max.bytes``,
4,096 by default) so the next owner can skip them. Pure functions, no I/O.

Format version 1: ``"om1:"`` then unpadded base85 (RFC 1924 alphabet, ASCII) of the frame
``kind (1 byte) | position (varint) | body | crc32 of "om1:" and all bytes before (4, BE)``.
Varints are unsigned LEB128; index ``i`` of a body is offset ``position + 1 + i``. Kind ``R``:
run lengths as varints, alternately not-done then done, from a not-done run (maybe empty) to a
done run; small for dense offsets. Kind ``B``: a bitset, bit ``i`` (low bit of each byte first)
set when ``i`` is done; small for scattered ones. Kinds ``r``, ``b``: the same, zlib-compressed.

The encoder writes the shortest; when even that is over the limit, the longest prefix of the
done offsets (in offset order) that fits: an offset left out is only delivered twice. The
decoder returns nothing unless prefix, checksum, kind and position all match: a map for another
position is ignored, since an offset reset asks for a replay. Decoding bounds its memory.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterable

__all__ = ["PREFIX", "decode_done", "encode_done"]

#: marks metadata written by this module; the digit is the format version
PREFIX = "om1:"
_SEED = zlib.crc32(PREFIX.encode("ascii"))
_MAX_RAW = 1 << 22  # largest body before compression, so inflating cannot exhaust memory
_MAX_DONE = 1 << 20  # most offsets one map holds, so the decoded set stays bounded


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    """The varint at ``at`` and the index after it; IndexError or ValueError if malformed."""
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _runs(rel: list[int]) -> bytes:
    out = bytearray()
    start = cursor = 0
    for i in range(1, len(rel) + 1):
        if i == len(rel) or rel[i] != rel[i - 1] + 1:
            out += _varint(rel[start] - cursor) + _varint(i - start)
            cursor, start = rel[i - 1] + 1, i
    return bytes(out)


def _bits(rel: list[int]) -> bytes:
    out = bytearray(rel[-1] // 8 + 1)
    for i in rel:
        out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


def _frame(position: int, rel: list[int]) -> str:
    """The shortest encoding of the sorted, non-empty relative indexes ``rel``."""
    bodies = [(b"R", _runs(rel))]
    if rel[-1] < _MAX_RAW * 8:
        bodies.append((b"B", _bits(rel)))
    bodies += [
        (kind.lower(), zlib.compress(raw, 9)) for kind, raw in bodies if len(raw) <= _MAX_RAW
    ]
    kind, body = min(bodies, key=lambda candidate: len(candidate[1]))
    head = kind + _varint(position) + body
    crc = zlib.crc32(head, _SEED).to_bytes(4, "big")
    return PREFIX + base64.b85encode(head + crc).decode("ascii")


def encode_done(position: int, done: Iterable[int], limit: int = 4000) -> str:
    """Metadata naming the offsets of ``done`` above ``position``, at most ``limit`` characters.

    ``position`` is the committed offset (the lowest not done). Offsets at or below it are
    ignored. Returns "" when nothing is done above it or not even one offset fits.
    """
    if position < 0:
        raise ValueError(f"position {position} is negative")
    rel = sorted({offset - position - 1 for offset in done if offset > position})[:_MAX_DONE]
    if not rel:
        return ""
    text = _frame(position, rel)
    if len(text) <= limit:
        return text
    # Gallop then bisect on the prefix length: the prefix that fits is usually short, so
    # this encodes short prefixes only. ``good`` fits (``best`` is its text), ``bad`` does not.
    good, bad, best = 0, 1, ""
    while bad < len(rel) and len(text := _frame(position, rel[:bad])) <= limit:
        good, bad, best = bad, bad * 2, text
    bad = min(bad, len(rel))
    while bad - good > 1:
        mid = (good + bad) // 2
        if len(text := _frame(position, rel[:mid])) <= limit:
            good, best = mid, text
        else:
            bad = mid
    return best


def decode_done(position: int, metadata: str | None) -> frozenset[int]:
    """The offsets above ``position`` that ``metadata`` names as done.

    Anything not written by :func:`encode_done` for this very position (foreign text, another
    version, a truncated or damaged string, a map for another position) gives an empty set.
    """
    if position < 0 or not metadata or not metadata.startswith(PREFIX):
        return frozenset()
    try:
        return frozenset(_decode(position, base64.b85decode(metadata[len(PREFIX) :])))
    except (ValueError, IndexError, zlib.error):
        return frozenset()


def _decode(position: int, frame: bytes) -> list[int]:
    head, crc = frame[:-4], frame[-4:]
    if len(head) < 2 or zlib.crc32(head, _SEED) != int.from_bytes(crc, "big"):
        return []
    kind, (mapped, at) = head[:1], _read_varint(head, 1)
    body = head[at:]
    if mapped != position or kind not in b"RBrb":
        return []
    if kind.islower():
        inflater = zlib.decompressobj()
        body = inflater.decompress(body, _MAX_RAW)
        if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
            return []
    base = position + 1
    if kind in b"Bb":
        if int.from_bytes(body, "little").bit_count() > _MAX_DONE:
            return []
        return [base + i for i in range(len(body) * 8) if body[i >> 3] >> (i & 7) & 1]
    offsets: list[int] = []
    at = cursor = 0
    while at < len(body):
        gap, at = _read_varint(body, at)
        run, at = _read_varint(body, at)
        if len(offsets) + run > _MAX_DONE:
            return []
        offsets.extend(range(base + cursor + gap, base + cursor + gap + run))
        cursor += gap + run
    return offsets
