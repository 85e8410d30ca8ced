"""The done-offset map in commit metadata: round trips, the size limit, and hostile input."""

from __future__ import annotations

import base64
import random
import zlib

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tagging_sidecar.kafka.offsetmap import PREFIX, decode_done, encode_done

SPAN = 100_000
positions = st.integers(min_value=0, max_value=2**62)


@st.composite
def runs(draw: st.DrawFn) -> set[int]:
    """Dense: alternating gaps and done runs."""
    done: set[int] = set()
    cursor = 1
    for gap, run in draw(st.lists(st.tuples(st.integers(0, 3000), st.integers(1, 8000)))):
        done.update(range(cursor + gap, min(cursor + gap + run, SPAN + 1)))
        cursor += gap + run + 1
    return done


@st.composite
def scattered(draw: st.DrawFn) -> set[int]:
    """Each offset of a span done with some probability, from dense to sparse."""
    rng = draw(st.randoms(use_true_random=False))
    density = draw(st.floats(0.001, 0.99))
    span = draw(st.integers(1, SPAN))
    return {i for i in range(1, span + 1) if rng.random() < density}


# offsets relative to the position; 1 is the first offset above it
relative = st.one_of(st.sets(st.integers(1, SPAN), max_size=300), runs(), scattered())


def _forge(position: int, kind: bytes, body: bytes) -> str:
    """A frame with a valid checksum, for input the encoder never writes."""
    head = kind + bytes(_leb128(position)) + body
    crc = zlib.crc32(head, zlib.crc32(PREFIX.encode()))
    return PREFIX + base64.b85encode(head + crc.to_bytes(4, "big")).decode()


def _leb128(value: int) -> bytearray:
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return out


@settings(deadline=None, max_examples=300)
@given(positions, relative, st.one_of(st.just(4000), st.integers(0, 200), st.integers(0, 5000)))
def test_round_trip_is_true_and_complete_when_it_fits(
    position: int, rel: set[int], limit: int
) -> None:
    done = {position + i for i in rel}
    text = encode_done(position, done, limit)
    full = encode_done(position, done, limit=10**9)
    got = decode_done(position, text)
    assert len(text) <= limit and text.isascii()
    # a prefix in offset order: only true offsets above the position, lost ones only at the top
    assert got == frozenset(sorted(done)[: len(got)])
    assert all(offset > position for offset in got)
    assert decode_done(position, full) == done
    event("complete" if len(full) <= limit else "prefix only")
    if len(full) <= limit:
        assert text == full and got == done
    else:  # the prefix kept is the longest: one more offset would not fit
        longer = sorted(done)[: len(got) + 1]
        assert len(encode_done(position, longer, limit=10**9)) > limit
    assert (text == "") == (not got)


@given(positions, st.text())
def test_foreign_text_decodes_to_nothing(position: int, text: str) -> None:
    assert decode_done(position, text) == frozenset()
    assert decode_done(position, PREFIX + text) == frozenset()


@given(positions, st.binary())
def test_unchecked_frames_decode_to_nothing(position: int, frame: bytes) -> None:
    assert decode_done(position, PREFIX + base64.b85encode(frame).decode()) == frozenset()


@pytest.mark.parametrize("metadata", [None, "", PREFIX, "checkpoint=42", '{"owner":"x"}', "om1"])
def test_foreign_metadata_decodes_to_nothing(metadata: str | None) -> None:
    assert decode_done(10, metadata) == frozenset()


@settings(deadline=None, max_examples=25)
@given(positions, relative)
def test_every_truncation_decodes_to_nothing(position: int, rel: set[int]) -> None:
    text = encode_done(position, {position + i for i in rel})
    assert all(decode_done(position, text[:cut]) == frozenset() for cut in range(len(text)))


@given(positions, st.sets(st.integers(1, 5000), min_size=1, max_size=200), st.data())
def test_bit_flips_decode_to_nothing(position: int, rel: set[int], data: st.DataObject) -> None:
    done = {position + i for i in rel}
    text = encode_done(position, done)
    frame = bytearray(base64.b85decode(text[len(PREFIX) :]))
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    frame[bit // 8] ^= 1 << bit % 8
    assert decode_done(position, PREFIX + base64.b85encode(bytes(frame)).decode()) == frozenset()
    # a damaged character: nothing, unless base85 maps it back to the very same bytes
    cut = data.draw(st.integers(len(PREFIX), len(text) - 1))
    damaged = text[:cut] + chr(ord(text[cut]) ^ 1 << data.draw(st.integers(0, 7))) + text[cut + 1 :]
    same = damaged.isascii() and _b85(damaged) == _b85(text)
    assert decode_done(position, damaged) == (frozenset(done) if same else frozenset())


def _b85(text: str) -> bytes | None:
    try:
        return base64.b85decode(text[len(PREFIX) :])
    except ValueError:
        return None


@given(positions, st.sets(st.integers(1, SPAN), min_size=1, max_size=300), st.integers(1, 2**40))
def test_a_map_for_another_position_is_ignored(position: int, rel: set[int], shift: int) -> None:
    text = encode_done(position, {position + i for i in rel})
    assert decode_done(position + shift, text) == frozenset()
    if position >= shift:
        assert decode_done(position - shift, text) == frozenset()


def test_unknown_version_and_kind_decode_to_nothing() -> None:
    text = encode_done(7, {9, 10})
    assert decode_done(7, text) == {9, 10}
    assert decode_done(7, "om2:" + text[len(PREFIX) :]) == frozenset()
    assert decode_done(7, _forge(7, b"Z", b"\x01\x02")) == frozenset()


def test_decoding_is_bounded_even_for_a_checked_frame() -> None:
    assert decode_done(0, _forge(0, b"R", bytes(_leb128(0) + _leb128(2**40)))) == frozenset()
    assert decode_done(0, _forge(0, b"b", zlib.compress(b"\xff" * (1 << 23)))) == frozenset()
    assert decode_done(0, _forge(0, b"R", b"\x00\x02")) == {1, 2}


def test_nothing_done_is_empty_metadata() -> None:
    assert encode_done(5, []) == ""
    assert encode_done(5, [3, 4, 5]) == ""  # at or below the position: covered by the commit
    assert encode_done(5, {6, 7}, limit=4) == ""  # not even one offset fits
    with pytest.raises(ValueError, match="negative"):
        encode_done(-1, {1})


def test_dense_run_is_tiny() -> None:
    position = 1_234_567_890
    done = set(range(position + 1, position + 10_001))
    text = encode_done(position, done)
    assert len(text) < 40
    assert decode_done(position, text) == done


def test_too_many_keeps_a_prefix_near_the_limit() -> None:
    position = 42
    rng = random.Random(20)
    done = {o for o in range(position + 1, position + 100_001) if rng.random() < 0.2}
    text = encode_done(position, done)
    got = decode_done(position, text)
    assert 3900 < len(text) <= 4000
    assert got == frozenset(sorted(done)[: len(got)]) and 0 < len(got) < len(done)


def test_4000_scattered_over_20000_fit() -> None:
    position = 987_654
    done = set(random.Random(4000).sample(range(position + 1, position + 20_001), 4000))
    text = encode_done(position, done)
    assert len(text) < 3000
    assert decode_done(position, text) == done
