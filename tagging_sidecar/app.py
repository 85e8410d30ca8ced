"""The sidecar: the only module that wires consume -> decode -> pool -> forward -> commit.

One thread (the caller of :meth:`Sidecar.run`) owns the Kafka consumer: it polls, decodes,
hands chunks of records to the pool, applies completed batches to the watermark, pauses
partitions under backpressure and commits. Pool workers only forward and report back through a
queue, so nothing but the poll thread ever touches the consumer.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from tagging_sidecar.config import Settings
from tagging_sidecar.decode import decoder_for
from tagging_sidecar.errors import (
    DecodeError,
    ForwardError,
    PermanentForwardError,
    PoolClosed,
    SidecarError,
)
from tagging_sidecar.forward import CallResult, DownstreamHealth, HavilahClient
from tagging_sidecar.kafka.config import consumer_config, producer_config
from tagging_sidecar.kafka.deadletter import DeadLetterProducer, FailureRateGuard
from tagging_sidecar.kafka.records import Chunk, Record, chunk_by_unit
from tagging_sidecar.kafka.stats import apply_statistics
from tagging_sidecar.kafka.watermark import Watermarks
from tagging_sidecar.observe.health import HealthServer, HealthState, tick_timeout
from tagging_sidecar.observe.metrics import Metrics
from tagging_sidecar.pool import Rejected, ScalingPolicy, WorkerPool

_log = structlog.get_logger("tagging_sidecar.app")
# librdkafka's own log lines go through stdlib logging, so they share the sidecar's format.
_librdkafka_log = logging.getLogger("librdkafka")

TP = tuple[str, int]

#: seconds the pool may stay full before the consumer pauses its partitions
PAUSE_AFTER = 1.0
#: seconds one poll may block when nothing is ready (bounds how late a rebalance is noticed)
IDLE_POLL = 0.5
Completion = tuple[Sequence[Chunk], Sequence[Rejected[Chunk]]]


class FatalError(SidecarError):
    """The pipeline cannot go on (failure-rate guard tripped, fatal Kafka error)."""


class _ForwardingDispatcher:
    """Adapts the Havilah client to the pool: chunks in, per-record rejections out."""

    def __init__(self, client: HavilahClient, ready_timeout: float) -> None:
        self._client = client
        self._ready_timeout = ready_timeout

    def before(self) -> None:
        self._client.wait_ready(self._ready_timeout)

    def process(self, batch: Sequence[Chunk]) -> Sequence[Rejected[Chunk]]:
        records = [record for chunk in batch for record in chunk]
        rejected = self._client.deliver([record.payload for record in records])
        return [Rejected([records[index]], error) for index, error in rejected]

    def after(self) -> None:
        return None


@dataclass
class RunSummary:
    """What one run did; returned by :meth:`Sidecar.run`."""

    consumed: int = 0
    forwarded: int = 0
    dead_lettered: int = 0
    undelivered_at_exit: int = 0


class Sidecar:
    """One consumer in the group, its pool and its forwarder."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        stop_event: threading.Event | None = None,
        serve_http: bool = True,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.stop_event = stop_event or threading.Event()
        self.summary = RunSummary()
        self.health = HealthState(
            stall_timeout=settings.health.stall_timeout,
            tick_timeout=tick_timeout(settings.shutdown.grace_period),
        )
        self._serve_http = serve_http
        self.http_port: int | None = None
        self._decode = decoder_for(settings.decode.format, settings.grpc.max_message_bytes - 1024)
        self._watermarks: Watermarks[TP] = Watermarks()
        self._completions: queue.SimpleQueue[Completion] = queue.SimpleQueue()
        self._pending: deque[tuple[Hashable, Chunk]] = deque()
        self._paused_for_backpressure = False
        self._full_since: float | None = None
        self._paused: set[TP] = set()
        self._halted: dict[TP, str] = {}
        self._assigned: set[TP] = set()
        self._cancel = threading.Event()
        self._closing = False
        self._commit_in_flight = False
        self._next_commit = 0.0
        self._next_gauges = 0.0
        self._guard = FailureRateGuard()
        self._dlq: DeadLetterProducer | None = None
        self._consumer: Consumer | None = None
        self._pool: WorkerPool[Chunk] | None = None
        self._client: HavilahClient | None = None
        self._inflight_bytes = 0
        self._fatal: str | None = None
        self._seen_scale = (0, 0)
        self._commit_started = 0.0

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> RunSummary:
        """Consume until ``stop_event`` is set, then drain, commit and close."""
        s = self.settings
        client_id = f"tagging-sidecar-{socket.gethostname()}-{os.getpid()}"
        http = None
        if self._serve_http:
            try:
                http = HealthServer(s.http.host, s.http.port, self.health, self.metrics.registry)
            except OSError as exc:
                raise FatalError(
                    f"cannot serve /livez, /readyz and /metrics on {s.http.host}:{s.http.port}: "
                    f"{exc.strerror} (set TAGGING_HTTP__PORT)"
                ) from None
            http.start()
            self.http_port = http.port
        downstream = DownstreamHealth(s.grpc.target, self._on_downstream)
        client = HavilahClient(
            s.grpc,
            cancel=self._cancel,
            observe=self._observe_call,
            on_retry=self.metrics.records_retried.inc,
            on_state=downstream.on_state,
        )
        client.background(downstream.watch)
        self._client = client
        self._pool = WorkerPool(
            lambda: _ForwardingDispatcher(client, ready_timeout=min(5.0, s.grpc.timeout)),
            self._on_batch_done,
            ScalingPolicy(
                s.pool.min_workers, s.pool.max_workers, s.pool.queue_size, s.pool.idle_timeout
            ),
            max_batch=s.pool.queue_size,
            before_backoff=(s.grpc.retry_initial_backoff, s.grpc.retry_max_backoff),
            name="forward",
            linger=s.pool.linger,
        )
        if s.dlq.topic:
            self._dlq = DeadLetterProducer(
                s.dlq.topic, producer_config(s.kafka, client_id + "-dlq"), self._on_dead_lettered
            )
        conf = consumer_config(s.kafka, client_id)
        conf["on_commit"] = self._on_commit
        conf["stats_cb"] = self._on_stats
        conf["error_cb"] = self._on_kafka_error
        self._consumer = Consumer(conf, logger=_librdkafka_log)
        self._pool.start()
        self._consumer.subscribe(
            s.kafka.topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        _log.info(
            "sidecar started",
            topics=s.kafka.topics,
            group=s.kafka.group_id,
            target=s.grpc.target,
            mode=s.grpc.mode.value,
            ordering=s.pool.ordering.value,
        )
        try:
            while not self.stop_event.is_set():
                self._step()
                if self._fatal is not None:
                    raise FatalError(self._fatal)
        finally:
            self._shutdown()
            if http is not None:
                http.stop()
        return self.summary

    def _step(self) -> None:
        consumer = self._consumer
        pool = self._pool
        assert consumer is not None and pool is not None
        self.health.tick()
        self._apply_completions()
        if self._pending:
            self._flush_pending()
        now = time.monotonic()
        messages: list[Message] = []
        if self._pending or self._inflight_bytes >= self.settings.pool.max_inflight_bytes:
            if self._full_since is None:
                self._full_since = now
            if self._paused_for_backpressure or now - self._full_since >= PAUSE_AFTER:
                # Saturated for a while (a slow or failing downstream): pause and keep polling,
                # so the group keeps us while nothing moves.
                self._pause_for_backpressure()
                pool.wait_for_space(0.1)
                messages = consumer.consume(self.settings.kafka.consume_batch_size, 0)
            else:
                # A full pool that drains is normal under load: wait for room without pausing,
                # because pause/resume throws librdkafka's prefetched records away.
                pool.wait_for_space(0.1)
        else:
            self._full_since = None
            self._resume_after_backpressure()
            # consume(n, timeout) waits until it has n records or the timeout passed: take what
            # is ready without waiting, and block (for one record) only when nothing is.
            messages = consumer.consume(self.settings.kafka.consume_batch_size, 0)
            if not messages:
                messages = consumer.consume(1, IDLE_POLL)
        if messages:
            self._ingest(messages)
        if self._dlq is not None:
            self._dlq.poll()
        now = time.monotonic()
        if now >= self._next_commit:
            self._next_commit = now + self.settings.kafka.commit_interval
            self._commit(asynchronous=True)
        if now >= self._next_gauges:
            self._next_gauges = now + 1.0
            self._update_gauges()

    # -- consume and decode ------------------------------------------------------------------

    def _ingest(self, messages: list[Message]) -> None:
        records: list[Record] = []
        decode = self._decode
        watermarks = self._watermarks
        halted = self._halted
        consumed = 0
        size = 0
        for message in messages:
            error = message.error()
            if error is not None:
                self._on_message_error(error)
                continue
            topic = message.topic()
            partition = message.partition()
            assert topic is not None and partition is not None
            tp = (topic, partition)
            watermark = watermarks.get(tp)
            if watermark is None or tp in halted:
                continue  # revoked or stopped in this batch: the next owner reads it again
            offset = message.offset()
            assert offset is not None
            watermark.track(offset)
            consumed += 1
            value = message.value()
            record = Record(topic, partition, offset, message.key(), b"", watermark)
            try:
                record.payload = decode(value)
            except DecodeError as exc:
                self.metrics.records_failed.labels(reason="decode").inc()
                self._reject(record, value, exc, reason="decode")
                continue
            size += len(record.payload)
            records.append(record)
        self.summary.consumed += consumed
        self.metrics.records_consumed.inc(consumed)
        self._inflight_bytes += size
        if records:
            self._pending.extend(
                chunk_by_unit(records, self.settings.pool.ordering, self.settings.pool.max_workers)
            )
            self._flush_pending()

    def _flush_pending(self, block: float | None = None) -> None:
        pool = self._pool
        assert pool is not None
        pending = self._pending
        while pending:
            unit, chunk = pending[0]
            key = unit
            if block is None:
                if not pool.offer(chunk, key, len(chunk)):
                    return
            else:
                pool.dispatch(chunk, key, len(chunk), timeout=block)
            pending.popleft()

    # -- results -----------------------------------------------------------------------------

    def _on_batch_done(self, chunks: Sequence[Chunk], rejected: Sequence[Rejected[Chunk]]) -> None:
        # Runs on a pool worker: hand over to the poll thread, which owns every piece of state.
        self._completions.put((chunks, rejected))

    def _apply_completions(self, timeout: float = 0.0) -> bool:
        """Apply finished batches to the watermarks; return whether any arrived."""
        got = False
        while True:
            try:
                chunks, rejected = (
                    self._completions.get(timeout=timeout)
                    if timeout and not got
                    else self._completions.get_nowait()
                )
            except queue.Empty:
                return got
            got = True
            failed: dict[int, BaseException] = {}
            for rejection in rejected:
                for record in rejection.item:
                    failed[id(record)] = rejection.error
            forwarded = 0
            size = 0
            for chunk in chunks:
                # A chunk is one partition's records: look its watermark up once. A result for
                # a partition revoked meanwhile finds another (or no) watermark and is dropped.
                head = chunk[0]
                current = self._watermarks.get((head.topic, head.partition))
                live = current is head.watermark
                for record in chunk:
                    size += len(record.payload)
                    error = failed.get(id(record)) if failed else None
                    if error is None:
                        forwarded += 1
                        if live:
                            record.watermark.done(record.offset)
                    else:
                        self._on_undelivered(record, error)
            self._inflight_bytes -= size
            self.summary.forwarded += forwarded
            self.metrics.records_forwarded.inc(forwarded)
            self._guard.record(failed=False, count=forwarded)

    def _done(self, record: Record) -> None:
        current = self._watermarks.get((record.topic, record.partition))
        if current is record.watermark:  # a late result of a revoked partition is dropped
            current.done(record.offset)

    def _on_undelivered(self, record: Record, error: BaseException) -> None:
        if self._cancel.is_set():
            return  # shutting down: stays uncommitted and is read again after the restart
        if isinstance(error, PermanentForwardError):
            reason = "rejected"
        elif isinstance(error, ForwardError):
            reason = "retries_exhausted"
        else:
            reason = "dispatch_error"
        self.metrics.records_failed.labels(reason=reason).inc()
        self._reject(record, None, error, reason=reason)

    def _reject(
        self, record: Record, value: bytes | None, error: BaseException, reason: str
    ) -> None:
        """A record that cannot be delivered: dead-letter it, or stop its partition."""
        log = _log.bind(
            topic=record.topic, partition=record.partition, offset=record.offset, reason=reason
        )
        self._guard.record(failed=True)
        if self._guard.tripped():
            # Leave this record (and every later one) uncommitted: stop, do not dead-letter.
            self._fatal = "most recent records failed; stopping instead of dead-lettering them all"
            log.error("failure rate too high; stopping", error=str(error))
            return
        if self._dlq is None:
            tp = (record.topic, record.partition)
            why = (
                f"partition {record.topic}/{record.partition} stopped at offset {record.offset}: "
                f"{error} (set TAGGING_DLQ__TOPIC to dead-letter such records)"
            )
            log.error("record cannot be delivered; partition stopped", error=str(error))
            self._halted[tp] = why
            self.health.halted_reason = why
            self._pause([tp])
            return
        log.warning("record dead-lettered", error=str(error), dlq=self._dlq.topic)
        self._dlq.send(record, value if value is not None else record.payload, error)

    def _on_dead_lettered(self, record: Record, error: KafkaError | None) -> None:
        if error is not None:
            self._fatal = f"dead-letter write failed: {error.str()}"
            return
        self.summary.dead_lettered += 1
        self.metrics.records_dead_lettered.labels(reason="undeliverable").inc()
        self._done(record)

    # -- backpressure ------------------------------------------------------------------------

    def _pause(self, tps: Sequence[TP]) -> None:
        consumer = self._consumer
        fresh = [tp for tp in tps if tp not in self._paused and tp in self._assigned]
        if fresh and consumer is not None:
            consumer.pause([TopicPartition(t, p) for t, p in fresh])
            self._paused.update(fresh)

    def _resume(self, tps: Sequence[TP]) -> None:
        consumer = self._consumer
        fresh = [tp for tp in tps if tp in self._paused and tp not in self._halted]
        if fresh and consumer is not None:
            consumer.resume([TopicPartition(t, p) for t, p in fresh])
            self._paused.difference_update(fresh)

    def _pause_for_backpressure(self) -> None:
        if not self._paused_for_backpressure:
            self._paused_for_backpressure = True
            self._pause(sorted(self._assigned))
            _log.debug("pool full, partitions paused", pending=len(self._pending))

    def _resume_after_backpressure(self) -> None:
        if self._paused_for_backpressure:
            self._paused_for_backpressure = False
            self._resume(sorted(self._assigned))

    # -- commits -----------------------------------------------------------------------------

    def _commit(self, asynchronous: bool, only: set[TP] | None = None) -> None:
        consumer = self._consumer
        assert consumer is not None
        if asynchronous and self._commit_in_flight:
            return
        moved = self._watermarks.uncommitted()
        offsets = [
            TopicPartition(tp[0], tp[1], position)
            for tp, position in moved.items()
            if only is None or tp in only
        ]
        if not offsets:
            return
        started = time.perf_counter()
        try:
            if asynchronous:
                self._commit_in_flight = True
                self._commit_started = started
                consumer.commit(offsets=offsets, asynchronous=True)
                return
            result = consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            self._commit_in_flight = False
            self.metrics.commit_failures.inc()
            _log.warning("commit failed", error=str(exc.args[0]) if exc.args else str(exc))
            return
        self.metrics.commit_duration.observe(time.perf_counter() - started)
        self._apply_commit_result(result or [])

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if self._commit_in_flight:
            self._commit_in_flight = False
            self.metrics.commit_duration.observe(time.perf_counter() - self._commit_started)
        if error is not None and error.code() != KafkaError._NO_OFFSET:
            self.metrics.commit_failures.inc()
            _log.warning("commit failed", error=error.str())
        self._apply_commit_result(partitions)

    def _apply_commit_result(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            if tp.error is not None:
                self.metrics.commit_failures.inc()
                _log.warning(
                    "commit of a partition failed",
                    topic=tp.topic,
                    partition=tp.partition,
                    error=tp.error.str(),
                )
                continue
            watermark = self._watermarks.get((tp.topic, tp.partition))
            if watermark is not None and tp.offset >= 0:
                watermark.mark_committed(tp.offset)
                self.health.watermark_moved()
                self.metrics.committed_offset.labels(tp.topic, str(tp.partition)).set(tp.offset)

    # -- rebalances (run inside consume(), on the poll thread) -------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        for tp in tps:
            self._watermarks.assign(tp)
            self._halted.pop(tp, None)
        self._assigned.update(tps)
        self.health.in_group = True
        if not self._halted:
            self.health.halted_reason = None
        if self._paused_for_backpressure:
            self._pause(tps)
        _log.info("partitions assigned", partitions=_names(tps))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = {(tp.topic, tp.partition) for tp in partitions}
        self._drop_pending(tps)
        if not self._closing:
            deadline = time.monotonic() + self.settings.shutdown.grace_period
            while self._has_in_flight(tps) and time.monotonic() < deadline:
                self._apply_completions(timeout=0.1)
        self._commit(asynchronous=False, only=tps)
        self._forget(tps)
        _log.info("partitions revoked", partitions=_names(sorted(tps)))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = {(tp.topic, tp.partition) for tp in partitions}
        self._drop_pending(tps)
        self._forget(tps)
        _log.warning("partitions lost; their results will be discarded", partitions=_names(tps))

    def _drop_pending(self, tps: set[TP]) -> None:
        kept: deque[tuple[Hashable, Chunk]] = deque()
        for unit, chunk in self._pending:
            if (chunk[0].topic, chunk[0].partition) not in tps:
                kept.append((unit, chunk))
            else:
                self._inflight_bytes -= sum(len(r.payload) for r in chunk)
        self._pending = kept

    def _has_in_flight(self, tps: set[TP]) -> bool:
        for tp in tps:
            watermark = self._watermarks.get(tp)
            if watermark is not None and watermark.has_in_flight():
                return True
        return False

    def _forget(self, tps: set[TP]) -> None:
        self._watermarks.forget(tps)
        self.metrics.forget_partitions(tps)
        self._assigned.difference_update(tps)
        self._paused.difference_update(tps)
        for tp in tps:
            self._halted.pop(tp, None)
        if not self._halted:
            self.health.halted_reason = None
        if not self._assigned:
            self.health.in_group = bool(self._consumer and self._consumer.assignment())

    # -- shutdown ----------------------------------------------------------------------------

    def _shutdown(self) -> None:
        consumer = self._consumer
        pool = self._pool
        grace = self.settings.shutdown.grace_period
        deadline = time.monotonic() + grace
        _log.info("shutting down", grace_period=grace, pending=len(self._pending))
        if consumer is not None:
            self._pause(sorted(self._assigned))
        if pool is not None:
            try:
                while self._pending and time.monotonic() < deadline:
                    self._apply_completions()
                    try:
                        self._flush_pending(block=0.1)
                    except Exception:  # noqa: BLE001 - PoolFull: keep draining until the deadline
                        continue
            except PoolClosed:
                pass
            timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._cancel.set)
            timer.start()
            leftovers = pool.stop(drain=True, timeout=max(0.0, deadline - time.monotonic()) + 1)
            timer.cancel()
            self._cancel.set()
            self.summary.undelivered_at_exit = sum(len(c) for c in leftovers) + sum(
                len(c) for _, c in self._pending
            )
        self._apply_completions()
        if self._dlq is not None:
            left = self._dlq.flush(max(1.0, deadline - time.monotonic()))
            if self._dlq.pending:
                self._dlq.poll()
            if left:
                _log.warning("dead-letter writes unconfirmed at exit", count=left)
        self._closing = True
        if consumer is not None:
            self._commit(asynchronous=False)
            consumer.close()
        if self._client is not None:
            self._client.close()
        in_flight = self._watermarks.in_flight()
        _log.info(
            "sidecar stopped",
            consumed=self.summary.consumed,
            forwarded=self.summary.forwarded,
            dead_lettered=self.summary.dead_lettered,
            left_uncommitted=in_flight,
        )

    # -- observation -------------------------------------------------------------------------

    def _observe_call(self, result: CallResult) -> None:
        self.metrics.rpc_duration.labels(result.code).observe(result.seconds)
        if result.code == "OK":
            self.metrics.batch_size.observe(result.records)

    def _on_downstream(self, up: bool, reason: str) -> None:
        self.health.downstream_reason = reason
        self.health.downstream_up = up

    def _on_stats(self, stats_json: str) -> None:
        apply_statistics(stats_json, self.metrics, self._assigned)

    def _on_kafka_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = f"fatal Kafka error: {error.str()}"
        else:
            _log.warning("kafka client error", error=error.str(), code=error.name())

    def _on_message_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            self._fatal = f"fatal Kafka error: {error.str()}"
        _log.warning("consume error", error=error.str(), code=error.name())

    def _update_gauges(self) -> None:
        pool = self._pool
        if pool is None:
            return
        stats = pool.stats()
        m = self.metrics
        m.workers_active.set(stats.active_workers)
        m.workers_wanted.set(stats.wanted_workers)
        m.pool_backlog.set(stats.backlog)
        m.inflight_records.set(self._watermarks.in_flight())
        m.inflight_bytes.set(max(0, self._inflight_bytes))
        m.partitions_paused.set(len(self._paused))
        m.pool_scale_events.labels(direction="up").inc(stats.scale_ups - self._seen_scale[0])
        m.pool_scale_events.labels(direction="down").inc(stats.scale_downs - self._seen_scale[1])
        self._seen_scale = (stats.scale_ups, stats.scale_downs)
        if any(w.has_in_flight() for _, w in self._watermarks.items()):
            m.watermark_stalled.set(self.health.stalled_for())
        else:
            self.health.watermark_moved()
            m.watermark_stalled.set(0)


def _names(tps: Any) -> list[str]:
    return [f"{t}/{p}" for t, p in tps]
