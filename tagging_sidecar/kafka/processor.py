"""The stream processor: the poll loop, backpressure, rebalances and shutdown.

It is handed every part it uses (consumer, pool, outcome channel, dead-letter producer,
decoder, clock) through small protocols, so the whole delivery protocol runs the same against
librdkafka and against the deterministic fakes of the test suite. One thread calls
:meth:`StreamProcessor.step`; rebalance callbacks run inside its ``consume()``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from confluent_kafka import KafkaError, TopicPartition

from tagging_sidecar.errors import FatalError
from tagging_sidecar.kafka.commit import Committer, Committing
from tagging_sidecar.kafka.inflight import InFlight
from tagging_sidecar.kafka.ingest import WHOLE, Ingest, whole_unit
from tagging_sidecar.kafka.offsetmap import decode_done
from tagging_sidecar.kafka.outcomes import OutcomeRouter, Outcomes, Tally
from tagging_sidecar.kafka.partitions import TP, PartitionStates
from tagging_sidecar.kafka.records import Chunk, Message
from tagging_sidecar.observe.health import HealthState
from tagging_sidecar.observe.metrics import Metrics
from tagging_sidecar.pool import LINGER_BELOW, PoolStats

_log = structlog.get_logger("tagging_sidecar.processor")

Rebalance = Callable[[Any, list[TopicPartition]], None]


class Consumer(Committing, Protocol):
    """The part of ``confluent_kafka.Consumer`` the processor uses."""

    def consume(self, num_messages: int, timeout: float) -> list[Any]: ...
    def pause(self, partitions: list[TopicPartition]) -> None: ...
    def resume(self, partitions: list[TopicPartition]) -> None: ...
    def committed(
        self, partitions: list[TopicPartition], timeout: float
    ) -> list[TopicPartition]: ...
    def close(self) -> None: ...


#: the most calls in flight for which reads stay whole (see ``_whole_chunks_suffice``): a
#: limit that settles higher wants lanes, and one moving around the number of busy partitions
#: would switch a partition between whole and split chunks, each switch a wait
WHOLE_CHUNK_CALLS = 2


class Pool(Protocol):
    """The part of :class:`~tagging_sidecar.pool.WorkerPool` the processor uses."""

    def offer(
        self, item: Chunk, key: Hashable | None = None, weight: int = 1, waited: float = 0.0
    ) -> bool: ...
    def call_here(self, items: Sequence[Chunk], weight: int) -> bool: ...
    def withdraw(self, predicate: Callable[[Chunk], bool]) -> list[Chunk]: ...
    def stop(self, drain: bool = True, timeout: float | None = None) -> list[Chunk]: ...
    def stats(self) -> PoolStats: ...
    def holds(self, keys: Iterable[Hashable]) -> bool: ...
    @property
    def limit(self) -> int: ...


class DeadLetterQueue(Protocol):
    """The part of the dead-letter producer the processor drives."""

    topic: str

    def poll(self, timeout: float = 0.0) -> None: ...
    def flush(self, timeout: float) -> int: ...


@dataclass(frozen=True)
class Timing:
    """The processor's clocks and limits, in seconds."""

    consume_batch: int = 2000
    idle_poll: float = 0.5  #: how long one poll may block when nothing is ready or in flight
    busy_poll: float = 0.005  #: how long one poll may block while records are in flight
    #: while records are in flight, how long a poll that finds nothing ready waits to gather a
    #: call's worth (``gather_records``) instead of returning at the first record; what it
    #: gathers counts as having lingered (0: return at the first; at most ``busy_poll``)
    gather: float = 0.005
    gather_records: int = LINGER_BELOW
    #: how long reading must find nothing, with nothing in flight, before what settled is
    #: committed ahead of the interval (a record arriving sooner keeps the commit cadence)
    caught_up: float = 0.1
    pause_after: float = 1.0  #: how long the pipeline may stay full before partitions pause
    hold_limit: int = 16  #: messages held aside while full before partitions pause
    grace: float = 20.0  #: drain on shutdown, wait for in-flight work on revoke
    committed_timeout: float = 10.0  #: reading committed offsets on assign
    wait_step: float = 0.05  #: one wait for results while draining or revoking
    full_wait: float = 0.1  #: one wait for results while the pipeline is full


class StreamProcessor:
    """Consume -> ingest -> pool -> outcomes -> commit, on the caller's thread."""

    def __init__(
        self,
        *,
        consumer: Consumer,
        pool: Pool,
        outcomes: Outcomes,
        partitions: PartitionStates,
        inflight: InFlight,
        router: OutcomeRouter,
        ingest: Ingest,
        committer: Committer,
        health: HealthState,
        metrics: Metrics,
        tally: Tally,
        cancel: threading.Event,
        dead_letters: DeadLetterQueue | None = None,
        timing: Timing | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consumer = consumer
        self._pool = pool
        self._outcomes = outcomes
        self.partitions = partitions
        self.inflight = inflight
        self._router = router
        self._ingest = ingest
        self.committer = committer
        self.health = health
        self._metrics = metrics
        self.tally = tally
        self._cancel = cancel
        self._dead_letters = dead_letters
        self._timing = timing or Timing()
        self._clock = clock
        self._pending: deque[tuple[Hashable, Chunk]] = deque()
        #: records of ``_pending`` the pool refused at the last offer: reading goes on while
        #: fewer than one ``consume()`` of them wait, so other units keep the workers busy
        self._waiting = 0
        self._held: list[Message] = []
        self._held_since = 0.0  #: when consume() returned the first message held aside
        self._full_since: float | None = None
        #: whether the last read took everything that was ready (the consumer has caught up
        #: with the log): only then may a call be made on this thread (see ``_flush``), and
        #: its records are kept in whole chunks (see :mod:`tagging_sidecar.kafka.ingest`)
        self._caught_up = False
        self.fatal: str | None = None

    # -- the loop -------------------------------------------------------------------------

    def step(self) -> None:
        """One pass: apply results, hand on what waits, read more (or pause), commit."""
        self.health.tick()
        self._apply(self._outcomes.take())
        self._flush()
        now = self._clock()
        if self._waiting >= self._timing.consume_batch or self.inflight.full():
            if self._full_since is None:
                self._full_since = now
            if (
                self.partitions.backpressure
                or now - self._full_since >= self._timing.pause_after
                or len(self._held) >= self._timing.hold_limit
            ):
                # Full for a while (a slow or failing downstream): pause and keep polling, so
                # the group keeps us while nothing moves.
                self.partitions.pause_all()
                messages = self.consumer.consume(self._timing.consume_batch, 0)
                self._ingest_all(messages, self._clock())
            else:
                # Full for a moment (normal under load): pausing would throw librdkafka's
                # prefetch away, but commit results and rebalances are only served inside
                # consume(). Poll for one message per pass and keep it aside until there is
                # room (one per pass, for at most ``pause_after`` seconds or ``hold_limit``
                # messages).
                self._caught_up = False
                held = self.consumer.consume(1, 0)
                if held:
                    if not self._held:
                        self._held_since = self._clock()
                    self._held += held
            # Nothing in a call means the pipeline waits only for a commit to land, and its
            # result is served inside consume(): look again soon instead of at the next result.
            wait = self._timing.full_wait if self.inflight.records else self._timing.busy_poll
            self._apply(self._outcomes.take(wait))
        else:
            self._full_since = None
            self.partitions.resume_all()
            # Take what is ready without waiting; block (for one record) only when nothing is.
            # Messages held aside, and records waiting for a busy worker, count against the
            # room, so reading stays within the bounds: at most one consume() batch waits
            # beside the pool.
            wanted = self.inflight.room(self._timing.consume_batch - self._waiting) - len(
                self._held
            )
            fresh = self.consumer.consume(wanted, 0) if wanted > 0 else []
            self._caught_up = len(fresh) < wanted
            messages = self._held + fresh
            if messages:
                # A chunk is timed from its oldest record: one held aside counts from its
                # consume().
                consumed = self._held_since if self._held else self._clock()
            else:
                messages, consumed = self._wait_for_records(wanted)
            self._held = []
            self._ingest_all(messages, consumed)
        if self._dead_letters is not None:
            self._dead_letters.poll(0)
        self.committer.maybe_commit()
        self.health.halted_reason = self.partitions.halted_reason()
        self.fatal = self.fatal or self._router.fatal
        if self.fatal is not None:
            raise FatalError(self.fatal)

    def _wait_for_records(self, wanted: int) -> tuple[list[Message], float]:
        """Block for records when none is ready, as long as nothing else needs the loop; return
        them and the time they count as read from (a reading of the clock).

        Results and commit reports arrive on other queues than Kafka's: while either is
        awaited, block only briefly, so that they are applied without delay, and gather what
        arrives meanwhile (up to a call's worth) rather than wake for each fetch: at moderate
        rates every wake costs more than the records it brings. What a poll gathered counts
        from when the poll began, so the pool does not make it linger a second time. With
        nothing in flight but records settled since the last commit, block a little, then
        commit them: a consumer that has caught up leaves no lag standing until the commit
        interval.
        """
        timing = self._timing
        if self.inflight.records or self.committer.in_flight:
            gather = min(timing.gather, timing.busy_poll)
            if gather > 0 and wanted > 1:
                began = self._clock()
                return self.consumer.consume(min(wanted, timing.gather_records), gather), began
            return self.consumer.consume(1, timing.busy_poll), self._clock()
        if not self.committer.settled_since_commit:
            return self.consumer.consume(1, timing.idle_poll), self._clock()
        messages = self.consumer.consume(1, min(timing.caught_up, timing.idle_poll))
        if not messages:
            self.committer.maybe_commit(force=True)
        return messages, self._clock()

    def _ingest_all(self, messages: Sequence[Message], consumed: float) -> None:
        if not messages:
            return
        good = []
        for message in messages:
            error = message.error()
            if error is None:
                good.append(message)
            else:
                self.on_error(error)  # type: ignore[arg-type]
        whole = self._caught_up or self._whole_chunks_suffice()
        self._pending.extend(self._ingest(good, consumed, whole=whole))
        self._flush()

    def _flush(self) -> None:
        pending = self._pending
        if not pending:
            self._waiting = 0
            return
        now = self._clock()
        for _, chunk in pending:
            chunk.offered = now
        if self._caught_up and self._pool.call_here(
            [chunk for _, chunk in pending], sum(len(chunk) for _, chunk in pending)
        ):
            # Everything ready was read and the pool is idle: one call made here keeps up,
            # and a worker would only add a thread switch to every record's latency.
            self._pending = deque()
            self._waiting = 0
            return
        offer = self._pool.offer
        # A chunk the pool refuses (its unit's worker is busy and its queue full) holds back
        # the later chunks of its ordering unit only: the others go on to idle workers.
        refused: set[Hashable] = set()
        #: partitions of which a chunk holding every unit waits: all their later chunks wait
        behind: set[TP] = set()
        #: partitions of which a chunk of one unit waits: a later one goes split, behind it
        split_waits: set[TP] = set()
        whole_held: dict[TP, bool] = {}
        whole_ok = self._whole_chunks_suffice()
        kept: deque[tuple[Hashable, Chunk]] = deque()
        waiting = 0
        for key, chunk in pending:
            tp = chunk.tp
            whole_key = whole_unit(tp)
            units: list[tuple[Hashable, Chunk]]
            if tp in behind:
                units = []
            else:
                held = whole_held.get(tp)
                if held is None:
                    held = whole_held[tp] = self._pool.holds([whole_key])
                if key is not WHOLE:
                    # A chunk of one unit must not overtake a whole chunk of its partition.
                    units = [] if held else [(key, chunk)]
                elif whole_ok and (held or self._may_send_whole(tp, split_waits)):
                    units = [(whole_key, chunk)]
                elif held:
                    units = []  # more calls are allowed now: split, once the whole ones are done
                else:
                    units = self._ingest.split(chunk)
            if not units:
                behind.add(tp)
                kept.append((key, chunk))
                waiting += len(chunk)
                continue
            for unit, part in units:
                whole = unit == whole_key
                if unit is None or unit not in refused:
                    if offer(part, unit, len(part), now - part.consumed):
                        whole_held[tp] = whole_held[tp] or whole
                        continue
                    refused.add(unit)
                if whole:
                    behind.add(tp)
                    kept.append((WHOLE, part))
                else:
                    split_waits.add(tp)
                    kept.append((unit, part))
                waiting += len(part)
        self._pending = kept
        self._waiting = waiting

    def _whole_chunks_suffice(self) -> bool:
        """Whether one chunk per partition gives the pool's limit enough to run side by side:
        the limit is one call, or two and no more than the partitions with records in flight.
        Splitting a read into its key lanes then only multiplies its chunks, each of which
        costs as much as dozens of records on its way back; with more calls allowed, the lanes
        are what lets calls run side by side (a hot partition, a slow downstream)."""
        limit = self._pool.limit
        return limit == 1 or limit <= min(WHOLE_CHUNK_CALLS, self.inflight.partitions())

    def _may_send_whole(self, tp: TP, split_waits: set[TP]) -> bool:
        """Whether a whole chunk of ``tp`` may go out as one unit: no chunk of any of its
        ordering units is in the pool, or waits before it."""
        return tp not in split_waits and not self._pool.holds(self._ingest.units(tp))

    def _apply(self, outcomes: list[Any]) -> None:
        if not outcomes:
            return
        before = self.tally.forwarded + self.tally.dead_lettered
        router = self._router
        for outcome in outcomes:
            router.apply(outcome)
        self.committer.settled(self.tally.forwarded + self.tally.dead_lettered - before)
        if router.resend:
            now = self._clock()
            for chunk in router.resend:
                # A local failure, not the server's verdict: the record goes out again.
                chunk.consumed = chunk.offered = now
                self._pending.append((chunk.tp, chunk))
            router.resend.clear()

    # -- rebalances (inside consume(), on this thread) ------------------------------------

    def on_assign(self, _consumer: object, assigned: list[TopicPartition]) -> None:
        """New partitions: read where each stands, and what a previous owner already did."""
        self.partitions.assign(self._committed(assigned))
        self.health.in_group = True
        _log.info("partitions assigned", partitions=_names(assigned))

    def _committed(
        self, assigned: list[TopicPartition]
    ) -> dict[TP, tuple[int | None, frozenset[int]]]:
        result: dict[TP, tuple[int | None, frozenset[int]]] = {
            (tp.topic, tp.partition): (None, frozenset()) for tp in assigned
        }
        try:
            committed = self.consumer.committed(
                [TopicPartition(tp.topic, tp.partition) for tp in assigned],
                timeout=self._timing.committed_timeout,
            )
        except Exception as exc:  # noqa: BLE001 - KafkaException; only duplicates are at stake
            _log.warning("committed offsets unknown; delivered records may repeat", error=str(exc))
            return result
        for tp in committed:
            if tp.error is None and tp.offset >= 0:
                done = decode_done(tp.offset, tp.metadata or "")
                result[(tp.topic, tp.partition)] = (tp.offset, done)
        return result

    def on_revoke(self, _consumer: object, revoked: list[TopicPartition]) -> None:
        """Partitions leave cleanly: finish their calls (within the grace), commit, forget."""
        tps = {(tp.topic, tp.partition) for tp in revoked}
        self._drop(tps)
        deadline = self._clock() + self._timing.grace
        while self.inflight.held(tps) and self._clock() < deadline and not self._cancel.is_set():
            if self._dead_letters is not None:
                self._dead_letters.poll(0)
            self._apply(self._outcomes.take(self._timing.wait_step))
        if not self._cancel.is_set():
            # At shutdown the last commit was already made, bounded by the deadline; a
            # synchronous one here could wait on a coordinator that is down.
            self.committer.commit_now(tps)
        self._forget(tps)
        _log.info("partitions revoked", partitions=_names(revoked))

    def on_lost(self, _consumer: object, lost: list[TopicPartition]) -> None:
        """Partitions taken away: commit nothing, discard their late results."""
        tps = {(tp.topic, tp.partition) for tp in lost}
        self._drop(tps)
        self._forget(tps)
        _log.warning("partitions lost; their results will be discarded", partitions=_names(lost))

    def _drop(self, tps: set[TP]) -> None:
        """Take back what was not sent yet: the next owner reads it."""

        def ours(chunk: Chunk) -> bool:
            return (chunk.topic, chunk.partition) in tps

        dropped = [chunk for _, chunk in self._pending if ours(chunk)]
        self._pending = deque(item for item in self._pending if not ours(item[1]))
        dropped += self._pool.withdraw(ours)
        for chunk in dropped:
            self._router.settle_chunk(chunk)

    def _forget(self, tps: set[TP]) -> None:
        self.partitions.forget(tps)
        self.inflight.forget(tps)
        self._router.forget(tps)
        self._metrics.forget_partitions(tps)
        self.health.in_group = bool(self.partitions.assigned())

    # -- shutdown -------------------------------------------------------------------------

    def close(self, deadline: float) -> int:
        """Drain, commit and close the consumer, all by ``deadline`` (a time of the clock).

        Everything read is handed to the pool; calls still running at the deadline are
        cancelled and their records stay uncommitted. Returns how many records were never sent.
        """
        self.partitions.pause_all()
        while self._pending and self._clock() < deadline:
            self._apply(self._outcomes.take(self._timing.wait_step))
            self._flush()
        unsent = [chunk for _, chunk in self._pending]
        self._pending.clear()
        remaining = max(0.0, deadline - self._clock())
        timer = threading.Timer(remaining, self._cancel.set)
        timer.start()
        unsent += self._pool.stop(drain=True, timeout=remaining + 1.0)
        timer.cancel()
        self._cancel.set()
        self._settle_all()
        if self._dead_letters is not None:
            left = self._dead_letters.flush(max(0.5, deadline - self._clock()))
            self._settle_all()
            if left:
                _log.warning("dead-letter writes unconfirmed at exit", count=left)
        for chunk in unsent:
            self._router.settle_chunk(chunk)
        self._commit_final(max(deadline, self._clock() + 1.0))
        self._close_consumer(max(deadline, self._clock() + 1.0))
        return sum(len(chunk) for chunk in unsent)

    def _close_consumer(self, deadline: float) -> None:
        # librdkafka's close() leaves the group and waits for the coordinator, which may be
        # down: it gets until the deadline, then the process goes on without it (the group
        # notices at the end of the session; nothing uncommitted was committed meanwhile).
        def close() -> None:
            try:
                self.consumer.close()
            except Exception as exc:  # noqa: BLE001 - KafkaException; only logged at exit
                _log.warning("closing the Kafka consumer failed", error=str(exc))

        closer = threading.Thread(target=close, name="kafka-close", daemon=True)
        closer.start()
        closer.join(max(0.0, deadline - self._clock()))
        if closer.is_alive():
            _log.warning("the Kafka consumer did not close by the deadline; exiting without it")

    def _commit_final(self, deadline: float) -> None:
        # Asynchronous and served until the deadline at the latest, so a coordinator that does
        # not answer cannot hold the shutdown past the grace period.
        # An earlier asynchronous commit may still be in flight: wait for it, then commit
        # what moved since, until nothing is left or the deadline passes.
        committer = self.committer
        while self._clock() < deadline:
            if not committer.in_flight:
                if not committer.has_uncommitted():
                    return
                committer.maybe_commit(force=True)
            self.consumer.consume(1, self._timing.wait_step)

    def _settle_all(self) -> None:
        if self._dead_letters is not None:
            self._dead_letters.poll(0)
        self._apply(self._outcomes.take())

    def on_error(self, error: KafkaError) -> None:
        """A consume or client error: fatal ones stop the processor."""
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            self.fatal = f"fatal Kafka error: {error.str()}"
        _log.warning("kafka client error", error=error.str(), code=error.name())


def _names(tps: list[TopicPartition]) -> list[str]:
    return [f"{tp.topic}/{tp.partition}" for tp in tps]


class GaugeSampler:
    """Refreshes the gauges that are sampled rather than counted (once a second)."""

    def __init__(self, processor: StreamProcessor, pool: Pool, metrics: Metrics) -> None:
        self._processor = processor
        self._pool = pool
        self._metrics = metrics
        self._seen_scale = (0, 0)

    def sample(self) -> None:
        """Read the pool, the in-flight counts and the partitions into the gauges."""
        processor = self._processor
        stats = self._pool.stats()
        m = self._metrics
        m.workers_active.set(stats.active_workers)
        m.workers_wanted.set(stats.wanted_workers)
        m.pool_backlog.set(stats.backlog)
        m.inflight_records.set(processor.inflight.records)
        m.inflight_bytes.set(processor.inflight.bytes)
        m.awaiting_commit.set(processor.inflight.awaiting)
        m.partitions_paused.set(processor.partitions.paused_count())
        ups, downs = self._seen_scale
        m.pool_scale_events.labels(direction="up").inc(stats.scale_ups - ups)
        m.pool_scale_events.labels(direction="down").inc(stats.scale_downs - downs)
        self._seen_scale = (stats.scale_ups, stats.scale_downs)
        if processor.partitions.in_flight():
            m.watermark_stalled.set(processor.health.stalled_for())
        else:
            processor.health.watermark_moved()
            m.watermark_stalled.set(0)
