"""Where a record's time goes: the stage histogram and the record age at acknowledgement.

A record's way through the sidecar, and the ``stage`` that times each piece of it:

* ``consumer_batch``: from ``consume()`` returning it to its hand-off to the pool (decode, and
  the wait in the processor's pending queue, or held aside while the pipeline is full);
* ``pool_queue``: from the hand-off until a worker takes it into a call (the pool's queue and
  the worker's linger);
* ``call``: from then until the server acknowledged it, retries and halving included;
* ``commit``: from the acknowledgement until the commit that covers it landed (the wait for
  the poll loop to take the result, for the commit cadence, for earlier records of the
  partition, and the commit round trip).

The stages follow each other without a gap. This is the hot path, so times are stamped on the
chunk (:class:`~tagging_sidecar.kafka.records.Chunk`), never on a record, and observed once
per batch a worker sends, timed on the batch's first chunk: the one that entered the worker's
queue first, and its first record, the oldest of the chunk.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from tagging_sidecar.kafka.partitions import TP
from tagging_sidecar.kafka.records import Chunk, RecordKey
from tagging_sidecar.kafka.watermark import PartitionWatermark
from tagging_sidecar.observe.metrics import Metrics
from tagging_sidecar.pool import Rejected

Clock = Callable[[], float]


class RecordDispatcher(Protocol):
    """A pool worker's dispatcher of records (:class:`~tagging_sidecar.forward.dispatcher.
    ForwardingDispatcher`): rejected records come back as one-record chunks."""

    def before(self) -> None:
        """Get ready to process."""

    def process(self, batch: Sequence[Chunk]) -> Sequence[Rejected[Chunk]]:
        """Deliver ``batch``; return the records given up on."""

    def after(self) -> None:
        """Release what ``before`` acquired."""


class TimedDispatcher:
    """A worker's dispatcher that times its calls: the stages up to the acknowledgement.

    It stamps, on the first chunk of each batch, when the worker took the batch into a call
    and when the server acknowledged it, and observes ``consumer_batch``, ``pool_queue``,
    ``call`` and the record age at that moment, on the worker's thread. A batch of which
    nothing was acknowledged (all rejected, or the call raised) is not observed.
    """

    def __init__(
        self,
        inner: RecordDispatcher,
        metrics: Metrics,
        clock: Clock = time.monotonic,
        wall: Clock | None = None,
    ) -> None:
        self._inner = inner
        self._metrics = metrics
        self._clock = clock
        # Kafka timestamps are wall-clock milliseconds; looked up at construction so a test
        # can stand in for it.
        self._wall = wall or time.time
        stage = metrics.stage_seconds
        self._consumer_batch = stage.labels(stage="consumer_batch")
        self._pool_queue = stage.labels(stage="pool_queue")
        self._call = stage.labels(stage="call")

    def before(self) -> None:
        """As the wrapped dispatcher."""
        self._inner.before()

    def after(self) -> None:
        """As the wrapped dispatcher."""
        self._inner.after()

    def process(self, batch: Sequence[Chunk]) -> Sequence[Rejected[Chunk]]:
        """Deliver ``batch`` through the wrapped dispatcher, and time it."""
        taken = self._clock()
        rejected = self._inner.process(batch)
        acked = self._clock()
        first = batch[0]
        first.taken = taken
        first.acked = acked
        if not rejected:
            ends = (0, -1)
            self._observe(first, [stamp for chunk in batch for stamp in chunk.timestamps(ends)])
            return ()
        # Rare: only what the server acknowledged has an age, and counts as delivered by it.
        refused = {key for r in rejected for key in r.item.record_keys()}
        stamps = _acknowledged_ends(batch, refused)
        if stamps:
            self._observe(first, stamps)
        return rejected

    def _observe(self, first: Chunk, stamps: list[int]) -> None:
        self._consumer_batch.observe(first.offered - first.consumed)
        self._pool_queue.observe(first.taken - first.offered)
        self._call.observe(first.acked - first.taken)
        self._metrics.observe_record_ages(stamps, now=self._wall())


def _acknowledged_ends(batch: Iterable[Chunk], refused: set[RecordKey]) -> list[int]:
    """Timestamps of the first and last acknowledged record of each chunk; ``refused`` holds
    the key of each record that was not."""
    stamps: list[int] = []
    for chunk in batch:
        kept = [i for i, key in enumerate(chunk.record_keys()) if key not in refused]
        if kept:
            stamps += chunk.timestamps((kept[0], kept[-1]))
    return stamps


class CommitWaits:
    """Acknowledged calls waiting for the commit that covers them: the ``commit`` stage.

    One entry per call (its first chunk), in a heap per partition by the chunk's last offset; a
    commit that lands at position P covers every entry below P. Entries belong to a partition's
    watermark, so a partition reset or assigned again starts afresh. Only the poll thread uses
    it (results are applied there, and commit results arrive inside ``consume()``).
    """

    def __init__(self, metrics: Metrics, clock: Clock = time.monotonic) -> None:
        self._observe = metrics.stage_seconds.labels(stage="commit").observe
        self._clock = clock
        self._waiting: dict[TP, tuple[PartitionWatermark, list[tuple[int, float]]]] = {}

    def acknowledged(
        self, tp: TP, watermark: PartitionWatermark, last_offset: int, acked: float
    ) -> None:
        """A call whose first chunk ends at ``last_offset`` of ``tp`` was acknowledged at
        ``acked`` (a reading of the clock)."""
        entry = self._waiting.get(tp)
        if entry is None or entry[0] is not watermark:
            entry = self._waiting[tp] = (watermark, [])
        heapq.heappush(entry[1], (last_offset, acked))

    def committed(self, tp: TP, watermark: PartitionWatermark, position: int) -> None:
        """A commit of ``tp`` at ``position`` (the next offset to read) landed."""
        entry = self._waiting.get(tp)
        if entry is None:
            return
        if entry[0] is not watermark:
            del self._waiting[tp]  # acknowledged under an earlier assignment of the partition
            return
        heap = entry[1]
        if not heap or heap[0][0] >= position:
            return
        now = self._clock()
        while heap and heap[0][0] < position:
            _, acked = heapq.heappop(heap)
            self._observe(max(0.0, now - acked))

    def forget(self, tps: Iterable[TP]) -> None:
        """Partitions revoked or lost: what they still wait for is never committed by us."""
        for tp in tps:
            self._waiting.pop(tp, None)

    def waiting(self) -> int:
        """How many calls wait for their commit (for tests)."""
        return sum(len(heap) for _, heap in self._waiting.values())
