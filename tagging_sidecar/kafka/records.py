"""A consumed record as it travels through the pool, and grouping into ordering units."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from tagging_sidecar.config import Ordering
from tagging_sidecar.kafka.watermark import PartitionWatermark


@dataclass(slots=True, eq=False)
class Record:
    """One decoded Kafka record: where it came from and the bytes to forward."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    payload: bytes
    watermark: PartitionWatermark

    @property
    def coordinates(self) -> str:
        """``topic/partition@offset``, for logs."""
        return f"{self.topic}/{self.partition}@{self.offset}"


Chunk = list[Record]


def ordering_unit(record: Record, ordering: Ordering) -> Hashable:
    """The key under which records must stay in order (None: no ordering)."""
    if ordering is Ordering.KEY:
        return (record.topic, record.partition, record.key)
    if ordering is Ordering.PARTITION:
        return (record.topic, record.partition)
    return None


def chunk_by_unit(records: Iterable[Record], ordering: Ordering) -> list[tuple[Hashable, Chunk]]:
    """Split consumed records into per-unit chunks, each in offset order.

    Unordered records are still grouped per partition so that a chunk is a useful batch.
    """
    chunks: dict[Hashable, Chunk] = {}
    for record in records:
        unit = ordering_unit(record, ordering)
        group = unit if unit is not None else (record.topic, record.partition)
        chunk = chunks.get(group)
        if chunk is None:
            chunks[group] = [record]
        else:
            chunk.append(record)
    if ordering is Ordering.UNORDERED:
        return [(None, chunk) for chunk in chunks.values()]
    return list(chunks.items())
