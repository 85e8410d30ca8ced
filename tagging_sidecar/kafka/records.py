"""A consumed record as it travels through the pool, and grouping into ordering units."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from tagging_sidecar.config import Ordering
from tagging_sidecar.kafka.watermark import PartitionWatermark

Headers = list[tuple[str, str | bytes | None]]


@dataclass(slots=True, eq=False)
class Record:
    """One consumed Kafka record: where it came from, the bytes to forward, and what the
    dead-letter topic needs to hold the original (its value when it differs from ``payload``,
    and its headers)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    payload: bytes
    watermark: PartitionWatermark
    original: bytes | None = None
    headers: Headers | None = None
    #: the Kafka timestamp in milliseconds (0 when the record has none)
    timestamp: int = 0

    @property
    def value(self) -> bytes | None:
        """The record's value as it was in Kafka (None for a tombstone)."""
        if self.original is not None or not self.payload:
            return self.original  # re-encoded (JSON), undecodable, or null
        return self.payload

    @property
    def coordinates(self) -> str:
        """``topic/partition@offset``, for logs."""
        return f"{self.topic}/{self.partition}@{self.offset}"


class Chunk(list[Record]):
    """Records of one ordering unit in offset order: one item of the pool.

    It carries the times of its way through the sidecar, so that they are stamped once per
    chunk rather than once per record (see :mod:`tagging_sidecar.kafka.stages`). Times are
    readings of the processor's monotonic clock.
    """

    __slots__ = ("acked", "consumed", "offered", "taken")

    #: when ``consume()`` returned its oldest record
    consumed: float
    #: when it was (last) offered to the pool
    offered: float
    #: when a worker took it into a call (stamped on the first chunk of a call)
    taken: float
    #: when the server acknowledged that call (stamped on the first chunk of a call)
    acked: float

    def __init__(self, records: Iterable[Record] = (), consumed: float = 0.0) -> None:
        super().__init__(records)
        self.consumed = self.offered = self.taken = self.acked = consumed


#: the lane of a partition's keyless records (and of every record outside ``key`` ordering)
PARTITION_LANE = -1


def ordering_unit(tp: tuple[str, int], lane: int, ordering: Ordering) -> Hashable:
    """The unit within which the records of ``tp``'s ``lane`` must stay in offset order
    (None: no ordering; the pool may run such chunks side by side).

    In ``key`` mode the keys of a partition are spread over lanes by hash (``hash(key) %
    lanes``, computed by :class:`~tagging_sidecar.kafka.ingest.Ingest` per record): records of
    one key always share a lane, so they stay in order, while a lane gathers many keys into one
    chunk. With as many lanes as workers no parallelism is lost, and chunks stay large enough
    to batch well even when every record has a different key. Keyless records keep the order
    of their partition (:data:`PARTITION_LANE`), as every record does in the other modes.
    """
    if ordering is Ordering.UNORDERED:
        return None
    if lane == PARTITION_LANE:
        return tp
    return (*tp, lane)
