"""Consumed messages -> records for the pool: decode, tombstone policy, offset bookkeeping.

Every message of an assigned, running partition is tracked on its watermark here, so that the
commit position can never pass it; what happens next depends on the record:

* already delivered by a previous owner (commit metadata): done at once, not sent again;
* a tombstone (null value): skipped and committed, dead-lettered, or its partition stopped,
  as ``TAGGING_DECODE__TOMBSTONES`` says;
* undecodable: rejected (dead-lettered, or its partition stopped);
* otherwise: handed on in per-ordering-unit chunks, counted in flight.

A read that needs no key lanes to be sent (the poll thread sends it itself, or the pool's
limit allows one call, or two and no more than the busy partitions, see ``StreamProcessor``)
is kept in one chunk per partition (*whole*), because under ``key`` ordering the records of a
partition would otherwise spread over as many chunks as there are lanes, a few records each,
and every chunk costs as much as dozens of records on the way back. The processor sends such
a chunk whole, or splits it into its ordering units (:meth:`Ingest.split`) where calls may run
side by side.

This runs once per record on the poll thread, the sidecar's busiest: a partition's state is
looked up once per ``consume()`` result (a *run* of its messages), its offsets are tracked as
a run, and chunks are filled as records are read.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from tagging_sidecar.config import Ordering, TombstonePolicy
from tagging_sidecar.decode import Decoder
from tagging_sidecar.errors import DecodeError
from tagging_sidecar.kafka.inflight import InFlight
from tagging_sidecar.kafka.outcomes import OutcomeRouter, Tally
from tagging_sidecar.kafka.partitions import PartitionStates
from tagging_sidecar.kafka.records import (
    PARTITION_LANE,
    Chunk,
    Message,
    Record,
    ordering_unit,
    record_of,
)
from tagging_sidecar.kafka.watermark import PartitionWatermark
from tagging_sidecar.observe.metrics import Metrics

#: the ordering unit of a whole chunk (a partition's records of every lane, see the module's
#: docstring) in the processor's queue: it goes to the workers either under
#: :func:`whole_unit` or split into its ordering units (see ``StreamProcessor._flush``)
WHOLE: Hashable = "whole partition, to be split into its ordering units"

#: the lane of :func:`whole_unit`: no key hashes to it
_WHOLE_LANE = -2


def whole_unit(tp: tuple[str, int]) -> Hashable:
    """The pool key of ``tp``'s whole chunks: distinct from every ordering unit of ``tp``, so
    the pool must never hold both at once (the processor sees to it)."""
    return (*tp, _WHOLE_LANE)


@dataclass(slots=True)
class _Run:
    """One partition's messages within one ``consume()`` result, while they are read."""

    tp: tuple[str, int]
    #: None: the partition is not ours or is halted; its messages are passed over
    watermark: PartitionWatermark | None
    #: the lowest offset the watermark accepts next (None: any)
    floor: int | None = None
    offsets: list[int] = field(default_factory=list)
    #: records per lane, in offset order
    lanes: dict[int, Chunk] = field(default_factory=dict)


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
        #: :meth:`units` of each partition seen, which depend on the partition alone
        self._units: dict[tuple[str, int], tuple[Hashable, ...]] = {}

    def __call__(
        self, messages: Sequence[Message], consumed_at: float = 0.0, whole: bool = False
    ) -> list[tuple[Hashable, Chunk]]:
        """Track, decode and chunk ``messages`` (errors among them are not records);
        ``consumed_at`` is when ``consume()`` returned them (a reading of the processor's
        clock). With ``whole``, under ``key`` ordering, each partition's records stay in one
        chunk whose unit is :data:`WHOLE` (see the module's docstring)."""
        chunks: list[tuple[Hashable, Chunk]] = []
        runs: dict[tuple[str | None, int | None], _Run] = {}
        #: records read and settled at once (tombstones, undecodable, delivered before)
        settled = 0
        decode = self._decode
        split = self._ordering is Ordering.KEY
        lanes = self._lanes if split and not whole else 0
        # The state of the partition being read is kept in locals while its messages follow
        # each other (consume() returns them in runs): this loop runs once per record.
        run: _Run | None = None
        topic: str | None = None
        partition: int | None = None
        where: tuple[str | None, int | None] = (None, None)
        watermark: PartitionWatermark | None = None
        floor: int | None = None
        before: frozenset[int] = frozenset()
        offsets: list[int] = []
        by_lane: dict[int, Chunk] = {}
        for message in messages:
            next_topic = message.topic()
            next_partition = message.partition()
            if run is None or next_partition != partition or next_topic != topic:
                if run is not None:
                    run.floor = floor
                topic, partition = next_topic, next_partition
                where = (topic, partition)
                run = runs.get(where)
                if run is None:
                    run = runs[where] = self._open(where)
                watermark, floor = run.watermark, run.floor
                offsets, by_lane = run.offsets, run.lanes
                before = watermark.delivered_before if watermark is not None else frozenset()
            if watermark is None:
                continue  # revoked or stopped: read again by whoever owns it
            offset = message.offset()
            assert offset is not None
            if floor is not None and offset < floor:
                # Offsets went back (the log was truncated, or reset): start the partition afresh.
                self._close(run, chunks)
                run = runs[where] = _Run(run.tp, self._partitions.reset(run.tp, offset))
                watermark = run.watermark
                assert watermark is not None
                offsets, by_lane, before = run.offsets, run.lanes, watermark.delivered_before
            offsets.append(offset)
            floor = offset + 1
            value = message.value()
            if value is None or (before and offset in before):
                # Rare: the offset must be tracked before it is settled, and settling may halt
                # the partition, so its state is read again for the next message.
                self._close(run, chunks)
                del runs[where]
                tp, run = run.tp, None
                settled += 1
                if value is not None:
                    self._skip(watermark, offset, "delivered_before")
                else:
                    self._tombstone(message, tp, offset, watermark)
                continue
            try:
                payload = decode(value)
            except DecodeError as exc:
                self._close(run, chunks)
                del runs[where]
                tp, run = run.tp, None
                settled += 1
                self._router.guard.decoded(failed=1)
                self._refuse(record_of(message, tp, offset, watermark, b""), exc, "decode")
                continue
            if lanes:
                key = message.key()
                lane = hash(key) % lanes if key is not None else PARTITION_LANE
            else:
                lane = PARTITION_LANE  # one chunk per partition: the key is not needed
            chunk = by_lane.get(lane)
            if chunk is None:
                chunk = by_lane[lane] = Chunk(run.tp, watermark, consumed_at)
            # Chunk.add, inlined: a method call per record costs more than these four lines.
            chunk.offsets.append(offset)
            chunk.payloads.append(payload)
            chunk.messages.append(message)
            chunk.size += len(payload)
        for left in runs.values():
            self._close(left, chunks)
        if split and whole:
            chunks = [(WHOLE, chunk) for _, chunk in chunks]
        decoded = sum(len(chunk) for _, chunk in chunks)
        self._tally.consumed += decoded + settled
        self._metrics.records_consumed.inc(decoded + settled)
        self._router.guard.decoded(ok=decoded)
        return chunks

    def units(self, tp: tuple[str, int]) -> tuple[Hashable, ...]:
        """Every ordering unit :meth:`split` can give ``tp``'s records (built once per
        partition: the processor asks on every pass that holds one of its whole chunks)."""
        units = self._units.get(tp)
        if units is None:
            lanes = (PARTITION_LANE, *range(self._lanes))
            units = self._units[tp] = tuple(
                ordering_unit(tp, lane, self._ordering) for lane in lanes
            )
        return units

    def split(self, chunk: Chunk) -> list[tuple[Hashable, Chunk]]:
        """A whole chunk's records in chunks of their ordering units, each in offset order."""
        lanes = self._lanes
        tp = chunk.tp
        by_lane: dict[int, Chunk] = {}
        for offset, payload, message in zip(
            chunk.offsets, chunk.payloads, chunk.messages, strict=True
        ):
            key = message.key()
            lane = hash(key) % lanes if key is not None else PARTITION_LANE
            part = by_lane.get(lane)
            if part is None:
                part = by_lane[lane] = Chunk(tp, chunk.watermark, chunk.consumed)
                part.offered = chunk.offered
            part.add(offset, payload, message)
        return [(ordering_unit(tp, lane, self._ordering), part) for lane, part in by_lane.items()]

    def _open(self, where: tuple[str | None, int | None]) -> _Run:
        topic, partition = where
        assert topic is not None and partition is not None  # errors were taken out before
        tp = (topic, partition)
        partitions = self._partitions
        watermark = partitions.watermark(tp)
        if watermark is None or partitions.halted(tp):
            return _Run(tp, None)
        return _Run(tp, watermark, watermark.next_trackable())

    def _close(self, run: _Run, chunks: list[tuple[Hashable, Chunk]]) -> None:
        """Track the run's offsets, count its records in flight and hand on its chunks."""
        if run.watermark is None or not run.offsets:
            return
        run.watermark.track_all(run.offsets)
        run.offsets = []
        if not run.lanes:
            return
        count = size = 0
        for lane, chunk in run.lanes.items():
            chunks.append((ordering_unit(run.tp, lane, self._ordering), chunk))
            count += len(chunk)
            size += chunk.size
        self._inflight.admit(run.tp, count, size)
        run.lanes = {}

    def _tombstone(
        self,
        message: Message,
        tp: tuple[str, int],
        offset: int,
        watermark: PartitionWatermark,
    ) -> None:
        """A null value: skipped, dead-lettered or its partition stopped, as configured."""
        policy = self._tombstones
        if policy is TombstonePolicy.SKIP:
            self._skip(watermark, offset, "tombstone")
            return
        record = record_of(message, tp, offset, watermark, b"")
        if policy is TombstonePolicy.DEAD_LETTER:
            self._refuse(record, DecodeError("record value is null (a tombstone)"), "tombstone")
        else:
            self._inflight.admit(tp, 1, 0)
            self._router.halt(record, "record value is null (TAGGING_DECODE__TOMBSTONES=stop)")

    def _refuse(self, record: Record, error: DecodeError, reason: str) -> None:
        self._inflight.admit((record.topic, record.partition), 1, 0)
        self._router.reject(record, error, reason)

    def _skip(self, watermark: PartitionWatermark, offset: int, reason: str) -> None:
        watermark.done(offset)
        self._tally.skipped += 1
        self._metrics.records_skipped.labels(reason=reason).inc()
