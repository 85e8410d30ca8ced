"""Consumed records as they travel through the pool: chunks of one ordering unit, held as
columns, and the one-record view a failure needs."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

from tagging_sidecar.config import Ordering
from tagging_sidecar.kafka.watermark import PartitionWatermark

Headers = list[tuple[str, str | bytes | None]]


class Message(Protocol):
    """The part of ``confluent_kafka.Message`` the sidecar reads (it cannot be built in tests)."""

    def error(self) -> object | None: ...
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> Headers | None: ...
    def timestamp(self) -> tuple[int, int]: ...


@dataclass(slots=True, eq=False)
class Record:
    """One consumed Kafka record that needs more than forwarding (dead-lettering, halting its
    partition): where it came from, the bytes it was to forward, and what the dead-letter topic
    needs to hold the original (its value when it differs from ``payload``, and its headers)."""

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


def record_of(
    message: Message,
    tp: tuple[str, int],
    offset: int,
    watermark: PartitionWatermark,
    payload: bytes,
) -> Record:
    """The :class:`Record` of ``message``; ``payload`` is what was (or would be) forwarded,
    empty when nothing was (undecodable or null)."""
    value = message.value()
    return Record(
        tp[0],
        tp[1],
        offset,
        message.key(),
        payload,
        watermark,
        None if payload and payload is value else value,
        message.headers(),
        message.timestamp()[1],
    )


#: what tells a record apart within the results of one call: its partition's watermark (a
#: partition read again after a reset or a new assignment has a new one) and its offset
RecordKey = tuple[int, int]


class Chunk:
    """Records of one ordering unit of one partition, in offset order: one item of the pool.

    The records are held as columns (offsets, the bytes to forward, and the consumed messages
    they came from), because the hot path needs only the first two: a whole chunk is sent,
    acknowledged and marked done without a Python object per record. A :class:`Record` is made
    only for a record that fails (:meth:`record`).

    A chunk also carries the times of its way through the sidecar, stamped once per chunk
    rather than once per record (see :mod:`tagging_sidecar.kafka.stages`). Times are readings
    of the processor's monotonic clock.
    """

    __slots__ = (
        "acked",
        "consumed",
        "messages",
        "offered",
        "offsets",
        "partition",
        "payloads",
        "size",
        "taken",
        "topic",
        "watermark",
    )

    def __init__(
        self,
        tp: tuple[str, int],
        watermark: PartitionWatermark,
        consumed: float = 0.0,
    ) -> None:
        self.topic, self.partition = tp
        #: the partition's watermark when the records were read (a later one means a new owner)
        self.watermark = watermark
        self.offsets: list[int] = []
        #: the bytes to forward, one per record
        self.payloads: list[bytes] = []
        #: the consumed messages, read again only to build a failed record
        self.messages: list[Message] = []
        #: payload bytes in all
        self.size = 0
        #: when ``consume()`` returned its oldest record
        self.consumed = consumed
        #: when it was (last) offered to the pool
        self.offered = consumed
        #: when a worker took it into a call (stamped on the first chunk of a call)
        self.taken = consumed
        #: when the server acknowledged that call (stamped on the first chunk of a call)
        self.acked = consumed

    @property
    def tp(self) -> tuple[str, int]:
        """The chunk's partition."""
        return (self.topic, self.partition)

    def __len__(self) -> int:
        return len(self.offsets)

    def add(self, offset: int, payload: bytes, message: Message) -> None:
        """Append a record (offsets must increase)."""
        self.offsets.append(offset)
        self.payloads.append(payload)
        self.messages.append(message)
        self.size += len(payload)

    def record(self, index: int) -> Record:
        """The ``index``-th record, with what a dead letter or a halt needs."""
        return record_of(
            self.messages[index], self.tp, self.offsets[index], self.watermark, self.payloads[index]
        )

    def single(self, index: int, consumed: float | None = None) -> Chunk:
        """A chunk of the ``index``-th record alone (a record rejected, or sent again)."""
        one = Chunk(self.tp, self.watermark, self.consumed if consumed is None else consumed)
        one.add(self.offsets[index], self.payloads[index], self.messages[index])
        return one

    def record_keys(self) -> list[RecordKey]:
        """Each record's :data:`RecordKey`, in order."""
        mark = id(self.watermark)
        return [(mark, offset) for offset in self.offsets]

    def timestamps(self, indexes: Sequence[int]) -> list[int]:
        """The Kafka timestamps (milliseconds) of the records at ``indexes``."""
        messages = self.messages
        return [messages[index].timestamp()[1] for index in indexes]


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
