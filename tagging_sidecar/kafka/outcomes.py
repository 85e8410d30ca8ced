"""Every result comes back on one channel and is routed in one place.

Pool workers put :class:`BatchDone`, dead-letter delivery reports put :class:`DeadLetterDone`;
the poll thread takes them and :class:`OutcomeRouter` decides: mark the watermark, dead-letter
the record, halt its partition, feed the failure-rate guard, or discard a late result of a
partition that is no longer ours (revoked, lost or reset meanwhile).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from tagging_sidecar.errors import ForwardError, PermanentForwardError
from tagging_sidecar.kafka.guard import FailureRateGuard
from tagging_sidecar.kafka.inflight import InFlight
from tagging_sidecar.kafka.partitions import TP, PartitionStates
from tagging_sidecar.kafka.records import Chunk, Record, RecordKey
from tagging_sidecar.kafka.stages import CommitWaits
from tagging_sidecar.observe.metrics import Metrics
from tagging_sidecar.pool import Rejected

_log = structlog.get_logger("tagging_sidecar.outcomes")


@dataclass(frozen=True, slots=True)
class BatchDone:
    """A pool batch finished; ``rejected`` holds one-record chunks the server turned down."""

    chunks: Sequence[Chunk]
    rejected: Sequence[Rejected[Chunk]]


@dataclass(frozen=True, slots=True)
class DeadLetterDone:
    """A dead-letter write finished; ``error`` says why it failed, None if acknowledged."""

    record: Record
    error: str | None


Outcome = BatchDone | DeadLetterDone


class Outcomes:
    """The channel: any thread puts, the poll thread takes."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Outcome] = queue.SimpleQueue()

    def put(self, outcome: Outcome) -> None:
        """Hand a result to the poll thread."""
        self._queue.put(outcome)

    def batch_done(self, chunks: Sequence[Chunk], rejected: Sequence[Rejected[Chunk]]) -> None:
        """The pool's ``on_done`` callback."""
        self._queue.put(BatchDone(chunks, rejected))

    def dead_letter_done(self, record: Record, error: str | None) -> None:
        """The dead-letter producer's ``on_done`` callback."""
        self._queue.put(DeadLetterDone(record, error))

    def take(self, timeout: float = 0.0) -> list[Outcome]:
        """Whatever arrived, waiting up to ``timeout`` seconds for the first one."""
        taken: list[Outcome] = []
        try:
            taken.append(
                self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            )
            while True:
                taken.append(self._queue.get_nowait())
        except queue.Empty:
            return taken


class DeadLetters(Protocol):
    """Where undeliverable records go (the dead-letter producer, or a fake in tests)."""

    topic: str

    def send(self, record: Record, error: BaseException) -> None:
        """Queue the record; its result comes back as a :class:`DeadLetterDone`."""


@dataclass
class Tally:
    """What one run did."""

    consumed: int = 0
    forwarded: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    undelivered_at_exit: int = 0


class OutcomeRouter:
    """Applies results to the watermarks, the dead-letter topic, halts and the guard."""

    def __init__(
        self,
        *,
        partitions: PartitionStates,
        inflight: InFlight,
        dead_letters: DeadLetters | None,
        metrics: Metrics,
        tally: Tally,
        cancel: threading.Event,
        guard: FailureRateGuard | None = None,
        commit_waits: CommitWaits | None = None,
    ) -> None:
        self._partitions = partitions
        self._inflight = inflight
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._tally = tally
        self._cancel = cancel
        #: records to send again (a local failure), one per chunk; the processor takes them
        self.resend: list[Chunk] = []
        self.guard = guard or FailureRateGuard()
        self.fatal: str | None = None
        self._commit_waits = commit_waits

    def apply(self, outcome: Outcome) -> None:
        """Route one result."""
        if isinstance(outcome, BatchDone):
            self._batch_done(outcome)
        else:
            self._dead_letter_done(outcome)

    def _batch_done(self, outcome: BatchDone) -> None:
        # A rejection names a chunk: one record the server refused, or a whole chunk of a
        # batch that failed as a whole.
        failed = {key: r for r in outcome.rejected for key in r.item.record_keys()}
        forwarded = 0
        for chunk in outcome.chunks:
            tp = (chunk.topic, chunk.partition)
            live = self._partitions.is_current(tp, chunk.watermark)
            if not failed:
                # The common case, a whole chunk acknowledged: no work per record but its offset.
                count = len(chunk)
                forwarded += count
                self._inflight.release(tp, count, chunk.size)
                if live:
                    chunk.watermark.done_all(chunk.offsets)
                    self._inflight.delivered(tp, count)
                continue
            forwarded += self._partly_done(chunk, tp, live, failed)
        self._tally.forwarded += forwarded
        self._metrics.records_forwarded.inc(forwarded)
        if forwarded and self._commit_waits is not None:
            # The commit stage of the call, timed on its first chunk as the others are.
            first = outcome.chunks[0]
            tp = (first.topic, first.partition)
            if self._partitions.is_current(tp, first.watermark):
                self._commit_waits.acknowledged(tp, first.watermark, first.offsets[-1], first.acked)
        self.guard.delivered(ok=forwarded)

    def _partly_done(
        self,
        chunk: Chunk,
        tp: TP,
        live: bool,
        failed: dict[RecordKey, Rejected[Chunk]],
    ) -> int:
        """Apply a chunk some of whose records failed; returns how many were forwarded."""
        forwarded = settled = size = delivered = 0
        for index, key in enumerate(chunk.record_keys()):
            rejection = failed.get(key)
            if rejection is not None and live:
                self._undelivered(chunk.single(index), rejection.error)
                continue
            # Acknowledged, or a late result of a partition no longer ours: settled either way.
            settled += 1
            size += len(chunk.payloads[index])
            if rejection is None:
                forwarded += 1
                if live:
                    chunk.watermark.done(chunk.offsets[index])
                    delivered += 1
        self._inflight.release(tp, settled, size)
        if delivered:
            self._inflight.delivered(tp, delivered)
        return forwarded

    def forget(self, tps: Iterable[TP]) -> None:
        """Partitions revoked or lost: stop waiting for their commits."""
        if self._commit_waits is not None:
            self._commit_waits.forget(tps)

    def _undelivered(self, one: Chunk, error: BaseException) -> None:
        """``one``, a chunk of one record, was not delivered."""
        if self._cancel.is_set():
            # Shutting down: the record stays uncommitted and is read again after the restart.
            self.settle_chunk(one)
            return
        if isinstance(error, PermanentForwardError):
            self.guard.delivered(failed=1)
            self.reject(one.record(0), error, "rejected")
        elif isinstance(error, ForwardError):
            self.reject(one.record(0), error, "retries_exhausted")
        else:
            # Not the server's verdict (a dispatcher bug, a local failure): send it again.
            _log.warning("batch failed locally; sending again", error=type(error).__name__)
            self.resend.append(one)

    def reject(self, record: Record, error: BaseException, reason: str) -> None:
        """A record that cannot be delivered: dead-letter it, or halt its partition."""
        self._metrics.records_failed.labels(reason=reason).inc()
        if self.guard.tripped():
            # Leave this record (and every later one) uncommitted: stop, do not dead-letter.
            self.fatal = "most recent records failed; stopping instead of dead-lettering them all"
            self.settle(record)
            return
        if self._dead_letters is None:
            self.halt(record, f"{error} (set TAGGING_DLQ__TOPIC to dead-letter such records)")
            return
        _log.warning(
            "record dead-lettered",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=reason,
            error=str(error),
        )
        self._dead_letters.send(record, error)

    def halt(self, record: Record, why: str) -> None:
        """Stop ``record``'s partition at it; it stays uncommitted until the partition moves."""
        tp = (record.topic, record.partition)
        if self._partitions.is_current(tp, record.watermark):
            reason = (
                f"partition {record.topic}/{record.partition} "
                f"stopped at offset {record.offset}: {why}"
            )
            _log.error("record cannot be delivered; partition stopped", reason=reason)
            self._partitions.halt(tp, reason)
        self.settle(record)

    def settle(self, record: Record) -> None:
        """Take ``record`` out of the in-flight accounting without marking it done."""
        self._inflight.release((record.topic, record.partition), 1, len(record.payload))

    def settle_chunk(self, chunk: Chunk) -> None:
        """:meth:`settle` for every record of ``chunk``."""
        self._inflight.release((chunk.topic, chunk.partition), len(chunk), chunk.size)

    def _dead_letter_done(self, outcome: DeadLetterDone) -> None:
        record = outcome.record
        tp = (record.topic, record.partition)
        if outcome.error is not None:
            self.halt(record, f"dead-letter write failed: {outcome.error}")
            return
        self.settle(record)
        self._tally.dead_lettered += 1
        self._metrics.records_dead_lettered.labels(reason="undeliverable").inc()
        if self._partitions.is_current(tp, record.watermark):
            record.watermark.done(record.offset)
            self._inflight.delivered(tp, 1)
