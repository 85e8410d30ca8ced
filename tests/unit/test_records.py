"""Grouping consumed records into ordering units."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tagging_sidecar.config import Ordering
from tagging_sidecar.kafka.records import Record, chunk_by_unit
from tagging_sidecar.kafka.watermark import PartitionWatermark

MARK = PartitionWatermark()


def record(partition: int, offset: int, key: bytes | None) -> Record:
    return Record("t", partition, offset, key, b"", MARK)


@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.sampled_from([None, b"a", b"b", b"c", b"d", b"e"])),
        max_size=60,
    ),
    st.integers(1, 8),
)
def test_key_mode_keeps_each_key_in_one_chunk_in_offset_order(
    spec: list[tuple[int, bytes | None]], lanes: int
) -> None:
    records = [record(p, offset, key) for offset, (p, key) in enumerate(spec)]
    chunks = chunk_by_unit(records, Ordering.KEY, lanes)
    assert sorted(r.offset for _, c in chunks for r in c) == list(range(len(records)))
    home: dict[tuple[int, bytes | None], object] = {}
    for unit, chunk in chunks:
        assert [r.offset for r in chunk] == sorted(r.offset for r in chunk)
        for r in chunk:
            assert home.setdefault((r.partition, r.key), unit) == unit
    assert len(chunks) <= 3 * (lanes + 1)


def test_partition_and_unordered_modes() -> None:
    records = [record(i % 2, i, b"k%d" % i) for i in range(6)]
    by_partition = chunk_by_unit(records, Ordering.PARTITION)
    assert [[r.offset for r in c] for _, c in by_partition] == [[0, 2, 4], [1, 3, 5]]
    unordered = chunk_by_unit(records, Ordering.UNORDERED)
    assert [unit for unit, _ in unordered] == [None, None]
