"""Consumed messages -> records for the pool: decode, tombstone policy, offset bookkeeping.

Every message of an assigned, running partition is tracked on its watermark here, so that the
commit position can never pass it; what happens next depends on the record:

* already delivered by a previous owner (commit metadata): done at once, not sent again;
* a tombstone (null value): skipped and committed, dead-lettered, or its partition stopped,
  as ``TAGGING_DECODE__TOMBSTONES`` says;
* undecodable: rejected (dead-lettered, or its partition stopped);
* otherwise: handed on in per-ordering-unit chunks, counted in flight.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Protocol

from tagging_sidecar.config import Ordering, TombstonePolicy
from tagging_sidecar.decode import Decoder
from tagging_sidecar.errors import DecodeError
from tagging_sidecar.kafka.inflight import InFlight
from tagging_sidecar.kafka.outcomes import OutcomeRouter, Tally
from tagging_sidecar.kafka.partitions import PartitionStates
from tagging_sidecar.kafka.records import Chunk, Headers, Record, chunk_by_unit
from tagging_sidecar.kafka.watermark import PartitionWatermark
from tagging_sidecar.observe.metrics import Metrics


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


class Ingest:
    """Turns one ``consume()`` result into chunks for the pool."""

    def __init__(
        self,
        *,
        decode: Decoder,
        tombstones: TombstonePolicy,
        ordering: Ordering,
        lanes: int,
        partitions: PartitionStates,
        inflight: InFlight,
        router: OutcomeRouter,
        metrics: Metrics,
        tally: Tally,
    ) -> None:
        self._decode = decode
        self._tombstones = tombstones
        self._ordering = ordering
        self._lanes = lanes
        self._partitions = partitions
        self._inflight = inflight
        self._router = router
        self._metrics = metrics
        self._tally = tally

    def __call__(
        self, messages: Sequence[Message], consumed_at: float = 0.0
    ) -> list[tuple[Hashable, Chunk]]:
        """Track, decode and chunk ``messages`` (errors among them are not records);
        ``consumed_at`` is when ``consume()`` returned them (a reading of the processor's
        clock)."""
        records: list[Record] = []
        partitions = self._partitions
        consumed = 0
        for message in messages:
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            assert topic is not None and partition is not None and offset is not None
            tp = (topic, partition)
            watermark = partitions.watermark(tp)
            if watermark is None or partitions.halted(tp):
                continue  # revoked or stopped in this batch: read again by whoever owns it
            try:
                watermark.track(offset)
            except ValueError:
                watermark = partitions.reset(tp, offset)
                watermark.track(offset)
            consumed += 1
            if watermark.delivered_before and offset in watermark.delivered_before:
                self._skip(watermark, offset, "delivered_before")
                continue
            record = self._record(message, tp, offset, watermark)
            if record is not None:
                records.append(record)
        self._tally.consumed += consumed
        self._metrics.records_consumed.inc(consumed)
        self._router.guard.decoded(ok=len(records))
        chunks = chunk_by_unit(records, self._ordering, self._lanes)
        for _, chunk in chunks:
            chunk.consumed = consumed_at
            head = chunk[0]
            size = sum(len(r.payload) for r in chunk)
            self._inflight.admit((head.topic, head.partition), len(chunk), size)
        return chunks

    def _record(
        self, message: Message, tp: tuple[str, int], offset: int, watermark: PartitionWatermark
    ) -> Record | None:
        value = message.value()
        key, headers = message.key(), message.headers()
        stamp = message.timestamp()[1]
        record = Record(tp[0], tp[1], offset, key, b"", watermark, value, headers, stamp)
        if value is None:
            self._tombstone(record)
            return None
        try:
            payload = self._decode(value)
        except DecodeError as exc:
            self._router.guard.decoded(failed=1)
            self._refuse(record, exc, "decode")
            return None
        record.payload = payload
        if payload is value:
            record.original = None  # protobuf input: forwarded as it came, kept once
        return record

    def _tombstone(self, record: Record) -> None:
        policy = self._tombstones
        if policy is TombstonePolicy.SKIP:
            self._skip(record.watermark, record.offset, "tombstone")
        elif policy is TombstonePolicy.DEAD_LETTER:
            self._refuse(record, DecodeError("record value is null (a tombstone)"), "tombstone")
        else:
            self._inflight.admit((record.topic, record.partition), 1, 0)
            self._router.halt(record, "record value is null (TAGGING_DECODE__TOMBSTONES=stop)")

    def _refuse(self, record: Record, error: DecodeError, reason: str) -> None:
        self._inflight.admit((record.topic, record.partition), 1, 0)
        self._router.reject(record, error, reason)

    def _skip(self, watermark: PartitionWatermark, offset: int, reason: str) -> None:
        watermark.done(offset)
        self._tally.skipped += 1
        self._metrics.records_skipped.labels(reason=reason).inc()
