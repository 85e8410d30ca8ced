"""The commit protocol: when to commit, what, and what a commit result means.

* Cadence by time (``interval``) and by count (``every`` records settled since the last commit),
  at most one asynchronous commit in flight; synchronous on revoke and at shutdown.
* Only positions that moved past the last commit are sent, so a commit never goes backwards.
* Each commit carries, in its metadata, the offsets already done above the position, so the
  next owner of the partition skips them after a crash (see :mod:`tagging_sidecar.kafka.offsetmap`).
* Results are applied to the watermarks only for partitions still assigned; a lost partition is
  never committed because its watermark is gone before the next commit is built.
* A landed commit confirms the delivered records it covers (:class:`InFlight` counts what
  awaits a commit, the records a crash would deliver again).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, Protocol, overload

import structlog
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from tagging_sidecar.kafka.inflight import InFlight
from tagging_sidecar.kafka.offsetmap import encode_done
from tagging_sidecar.kafka.partitions import TP, PartitionStates
from tagging_sidecar.kafka.stages import CommitWaits
from tagging_sidecar.observe.metrics import Metrics

_log = structlog.get_logger("tagging_sidecar.commit")


class Committing(Protocol):
    """The part of a consumer that commits offsets (synchronous commits return results)."""

    @overload
    def commit(
        self, *, offsets: list[TopicPartition], asynchronous: Literal[True] = ...
    ) -> None: ...
    @overload
    def commit(
        self, *, offsets: list[TopicPartition], asynchronous: Literal[False]
    ) -> list[TopicPartition]: ...


class Committer:
    """Owner of the commit cadence and of the one asynchronous commit in flight."""

    def __init__(
        self,
        *,
        consumer: Committing,
        partitions: PartitionStates,
        metrics: Metrics,
        interval: float,
        every: int,
        clock: Callable[[], float] = time.monotonic,
        on_moved: Callable[[], None] | None = None,
        inflight: InFlight | None = None,
        commit_waits: CommitWaits | None = None,
    ) -> None:
        self._consumer = consumer
        self._partitions = partitions
        self._metrics = metrics
        self._interval = interval
        self._every = every
        self._clock = clock
        self._on_moved = on_moved
        self._commit_waits = commit_waits
        self._due = clock() + interval
        self._settled = 0
        self._in_flight_since: float | None = None
        self._inflight = inflight or InFlight(1, 1)
        #: delivered records each partition of the commit in flight covers
        self._covers: dict[TP, int] = {}

    def has_uncommitted(self) -> bool:
        """Whether any assigned partition's position moved past its last commit."""
        return any(w.uncommitted() is not None for _, w in self._partitions.items())

    def settled(self, count: int) -> None:
        """``count`` more records were settled (the count cadence)."""
        self._settled += count

    @property
    def settled_since_commit(self) -> bool:
        """Whether records settled since the last commit was sent."""
        return self._settled > 0

    @property
    def in_flight(self) -> bool:
        """Whether an asynchronous commit awaits its result."""
        return self._in_flight_since is not None

    def maybe_commit(self, force: bool = False) -> None:
        """Commit asynchronously if it is time (or enough records settled, or ``force``) and
        none is in flight."""
        now = self._clock()
        if self._in_flight_since is not None:
            return
        if not force and now < self._due and self._settled < self._every:
            return
        self._due = now + self._interval
        self._settled = 0
        offsets = self._offsets(None)
        self._covers = self._cover(offsets, None)
        if not offsets:
            return
        self._in_flight_since = now
        try:
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            self._in_flight_since = None
            self._failed(exc)
            self._resend(offsets)

    def commit_now(self, only: set[TP] | None = None) -> None:
        """Commit synchronously (revoke, shutdown) the partitions in ``only`` (all if None)."""
        offsets = self._offsets(only)
        covers = self._cover(offsets, only)
        if not offsets:
            return
        started = self._clock()
        try:
            result = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            self._failed(exc)
            self._resend(offsets)
            return
        self._metrics.commit_duration.observe(self._clock() - started)
        self._apply(result or [], covers)

    def on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """librdkafka's ``on_commit`` callback (runs inside ``consume()``)."""
        if self._in_flight_since is not None:
            self._metrics.commit_duration.observe(self._clock() - self._in_flight_since)
            self._in_flight_since = None
        if error is not None and error.code() != KafkaError._NO_OFFSET:
            self._metrics.commit_failures.inc()
            _log.warning("commit failed", error=error.str())
            self._resend(partitions)
            return
        self._apply(partitions, self._covers)

    def _offsets(self, only: set[TP] | None) -> list[TopicPartition]:
        offsets = []
        for tp, watermark in self._partitions.items():
            if only is not None and tp not in only:
                continue
            position = watermark.uncommitted()
            if position is None:
                continue
            metadata = encode_done(position, watermark.done_above())
            offsets.append(TopicPartition(tp[0], tp[1], position, metadata=metadata))
            watermark.sent_version = watermark.done_version
        return offsets

    def _cover(self, offsets: list[TopicPartition], only: set[TP] | None) -> dict[TP, int]:
        """What each partition of this commit covers; a partition with nothing to commit has
        nothing at risk, so its delivered records are confirmed at once."""
        inflight = self._inflight
        sent = {(tp.topic, tp.partition) for tp in offsets}
        covers = {}
        for tp, _ in self._partitions.items():
            if only is not None and tp not in only:
                continue
            if tp in sent:
                covers[tp] = inflight.awaiting_in(tp)
            else:
                inflight.confirm(tp, inflight.awaiting_in(tp))
        return covers

    def _resend(self, partitions: list[TopicPartition]) -> None:
        """A commit failed: its metadata must be sent again with the next one."""
        for tp in partitions:
            watermark = self._partitions.watermark((tp.topic, tp.partition))
            if watermark is not None:
                watermark.sent_version = -1

    def _apply(self, partitions: list[TopicPartition], covers: dict[TP, int]) -> None:
        for tp in partitions:
            if tp.error is not None:
                self._resend([tp])
                self._metrics.commit_failures.inc()
                _log.warning(
                    "commit of a partition failed",
                    topic=tp.topic,
                    partition=tp.partition,
                    error=tp.error.str(),
                )
                continue
            key = (tp.topic, tp.partition)
            watermark = self._partitions.watermark(key)
            if watermark is not None and tp.offset >= 0:
                watermark.mark_committed(tp.offset)
                self._inflight.confirm(key, covers.get(key, 0))
                self._metrics.committed_offset.labels(tp.topic, str(tp.partition)).set(tp.offset)
                if self._commit_waits is not None:
                    self._commit_waits.committed((tp.topic, tp.partition), watermark, tp.offset)
                if self._on_moved is not None:
                    self._on_moved()

    def _failed(self, exc: KafkaException) -> None:
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError) and error.code() == KafkaError._NO_OFFSET:
            return
        self._metrics.commit_failures.inc()
        _log.warning("commit failed", error=str(error or exc))
