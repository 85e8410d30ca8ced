"""The composition root: the only module that knows every part and wires the real ones.

consume (librdkafka) -> ingest (decode) -> pool (workers) -> forward (gRPC) -> outcomes ->
commit. :class:`Sidecar` builds each part, hands them to a
:class:`~tagging_sidecar.kafka.processor.StreamProcessor`, runs its loop until asked to stop,
and shuts everything down within the grace period.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import structlog
from confluent_kafka import Consumer, KafkaError, TopicPartition

from tagging_sidecar.config import Scaling, Settings
from tagging_sidecar.decode import decoder_for
from tagging_sidecar.errors import FatalError
from tagging_sidecar.forward import CallResult, DownstreamHealth, HavilahClient, connect
from tagging_sidecar.forward.dispatcher import ForwardingDispatcher
from tagging_sidecar.kafka import deadletter
from tagging_sidecar.kafka.commit import Committer
from tagging_sidecar.kafka.config import consumer_config, dead_letter_config
from tagging_sidecar.kafka.inflight import InFlight
from tagging_sidecar.kafka.ingest import Ingest
from tagging_sidecar.kafka.outcomes import OutcomeRouter, Outcomes, Tally
from tagging_sidecar.kafka.partitions import PartitionStates
from tagging_sidecar.kafka.processor import GaugeSampler, StreamProcessor, Timing
from tagging_sidecar.kafka.records import Chunk
from tagging_sidecar.kafka.stages import CommitWaits, TimedDispatcher
from tagging_sidecar.kafka.stats import apply_statistics
from tagging_sidecar.observe.health import HealthServer, HealthState, tick_timeout
from tagging_sidecar.observe.metrics import Metrics
from tagging_sidecar.pool import AdaptiveLimit, LimitTuning, ScalingPolicy, WorkerPool

__all__ = ["FatalError", "RunSummary", "Sidecar"]

#: the deadline of a call the poll loop makes itself (seconds): it makes one only after a call
#: that took under 50 ms, so a call that lasts this long means the downstream is in trouble
CALL_ON_POLL_DEADLINE = 1.0

_log = structlog.get_logger("tagging_sidecar.app")
# librdkafka's own log lines go through stdlib logging, so they share the sidecar's format.
_librdkafka_log = logging.getLogger("librdkafka")

RunSummary = Tally


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
        self.summary = Tally()
        self.health = HealthState(
            stall_timeout=settings.health.stall_timeout,
            tick_timeout=tick_timeout(settings.shutdown.grace_period),
        )
        self._serve_http = serve_http
        self.http_port: int | None = None
        self._cancel = threading.Event()

    def run(self) -> RunSummary:
        """Consume until ``stop_event`` is set, then drain, commit and close."""
        http = self._serve() if self._serve_http else None
        downstream = DownstreamHealth(self.settings.grpc.target, self._on_downstream)
        client = connect(
            self.settings.grpc,
            cancel=self._cancel,
            observe=self._observe_call,
            on_retry=self.metrics.records_retried.inc,
            on_state=downstream.on_state,
        )
        client.background(downstream.watch)
        try:
            processor = self._build(client)
            try:
                self._loop(processor)
            finally:
                self._shutdown(processor)
        finally:
            client.close()
            if http is not None:
                http.stop()
        return self.summary

    def _serve(self) -> HealthServer:
        s = self.settings.http
        try:
            http = HealthServer(s.host, s.port, self.health, self.metrics.registry)
        except OSError as exc:
            raise FatalError(
                f"cannot serve /livez, /readyz and /metrics on {s.host}:{s.port}: "
                f"{exc.strerror} (set TAGGING_HTTP__PORT)"
            ) from None
        http.start()
        self.http_port = http.port
        return http

    def _build(self, client: HavilahClient) -> StreamProcessor:
        s = self.settings
        client_id = f"tagging-sidecar-{socket.gethostname()}-{os.getpid()}"
        outcomes = Outcomes()
        pool = self._pool(client, outcomes)
        dlq = self._dead_letters(client_id, outcomes)
        consumer = self._consumer(client_id)
        partitions = PartitionStates(consumer)
        inflight = InFlight(
            s.pool.max_inflight_records, s.pool.max_inflight_bytes, s.kafka.max_uncommitted
        )
        commit_waits = CommitWaits(self.metrics)
        router = OutcomeRouter(
            partitions=partitions,
            inflight=inflight,
            dead_letters=dlq,
            metrics=self.metrics,
            tally=self.summary,
            cancel=self._cancel,
            commit_waits=commit_waits,
        )
        processor = StreamProcessor(
            consumer=consumer,
            pool=pool,
            outcomes=outcomes,
            partitions=partitions,
            inflight=inflight,
            router=router,
            ingest=self._ingest(partitions, inflight, router),
            committer=Committer(
                consumer=consumer,
                partitions=partitions,
                metrics=self.metrics,
                interval=s.kafka.commit_interval,
                every=s.kafka.commit_every,
                on_moved=self.health.watermark_moved,
                inflight=inflight,
                commit_waits=commit_waits,
            ),
            health=self.health,
            metrics=self.metrics,
            tally=self.summary,
            cancel=self._cancel,
            dead_letters=dlq,
            timing=self._timing(),
        )
        self._processor = processor
        self._gauges = GaugeSampler(processor, pool, self.metrics)
        pool.start()
        self._subscribe(consumer, processor)
        return processor

    def _subscribe(self, consumer: Consumer, processor: StreamProcessor) -> None:
        s = self.settings
        consumer.subscribe(
            s.kafka.topics,
            on_assign=processor.on_assign,
            on_revoke=processor.on_revoke,
            on_lost=processor.on_lost,
        )
        _log.info(
            "sidecar started",
            topics=s.kafka.topics,
            group=s.kafka.group_id,
            target=s.grpc.target,
            mode=s.grpc.mode.value,
            ordering=s.pool.ordering.value,
        )

    def _consumer(self, client_id: str) -> Consumer:
        conf = consumer_config(self.settings.kafka, client_id)
        # librdkafka takes its callbacks at construction, before the parts that need the
        # consumer exist; they fire only inside consume(), when the processor is there.
        conf["on_commit"] = self._on_commit
        conf["stats_cb"] = self._on_stats
        conf["error_cb"] = self._on_kafka_error
        return Consumer(conf, logger=_librdkafka_log)

    def _ingest(
        self, partitions: PartitionStates, inflight: InFlight, router: OutcomeRouter
    ) -> Ingest:
        s = self.settings
        return Ingest(
            decode=decoder_for(s.decode.format, s.grpc.max_message_bytes - 1024),
            tombstones=s.decode.tombstones,
            ordering=s.pool.ordering,
            lanes=s.pool.max_workers,
            partitions=partitions,
            inflight=inflight,
            router=router,
            metrics=self.metrics,
            tally=self.summary,
        )

    def _timing(self) -> Timing:
        s = self.settings
        return Timing(
            consume_batch=s.kafka.consume_batch_size,
            grace=s.shutdown.grace_period,
            # Gathering while records are in flight is the pool's linger, done by the poll.
            gather=s.pool.linger,
        )

    def _pool(self, client: HavilahClient, outcomes: Outcomes) -> WorkerPool[Chunk]:
        s = self.settings
        ready = min(5.0, s.grpc.timeout)
        adaptive = s.pool.scaling is Scaling.ADAPTIVE
        caller = None
        if adaptive and s.pool.call_on_poll:
            # One attempt, of at most a second: the poll loop must not wait out an outage or a
            # hang (the workers retry the batch), it has rebalances and a shutdown to serve.
            caller = TimedDispatcher(
                ForwardingDispatcher(
                    client,
                    min(ready, CALL_ON_POLL_DEADLINE),
                    once_within=CALL_ON_POLL_DEADLINE,
                ),
                self.metrics,
            )
        return WorkerPool(
            lambda: TimedDispatcher(ForwardingDispatcher(client, ready), self.metrics),
            outcomes.batch_done,
            ScalingPolicy(
                s.pool.min_workers, s.pool.max_workers, s.pool.queue_size, s.pool.idle_timeout
            ),
            max_batch=s.pool.max_batch if adaptive else s.pool.queue_size,
            before_backoff=(s.grpc.retry_initial_backoff, s.grpc.retry_max_backoff),
            name="forward",
            linger=s.pool.linger,
            limiter=AdaptiveLimit(LimitTuning(max_limit=s.pool.max_workers)) if adaptive else None,
            caller=caller,
        )

    def _dead_letters(
        self, client_id: str, outcomes: Outcomes
    ) -> deadletter.DeadLetterProducer | None:
        s = self.settings
        if not s.dlq.topic:
            return None
        return deadletter.DeadLetterProducer(
            s.dlq.topic,
            deadletter.producer(dead_letter_config(s.kafka, client_id + "-dlq")),
            outcomes.dead_letter_done,
            truncate_to=s.dlq.truncate_to,
        )

    def _loop(self, processor: StreamProcessor) -> None:
        next_gauges = 0.0
        while not self.stop_event.is_set():
            processor.step()
            now = time.monotonic()
            if now >= next_gauges:
                next_gauges = now + 1.0
                self._gauges.sample()

    def _shutdown(self, processor: StreamProcessor) -> None:
        """Drain, commit and close, all within the grace period."""
        grace = self.settings.shutdown.grace_period
        _log.info("shutting down", grace_period=grace)
        self.summary.undelivered_at_exit = processor.close(time.monotonic() + grace)
        _log.info(
            "sidecar stopped",
            consumed=self.summary.consumed,
            forwarded=self.summary.forwarded,
            dead_lettered=self.summary.dead_lettered,
            left_uncommitted=processor.partitions.in_flight(),
        )

    # -- observation ----------------------------------------------------------------------

    def _observe_call(self, result: CallResult) -> None:
        self.metrics.rpc_duration.labels(result.code).observe(result.seconds)
        if result.code == "OK":
            self.metrics.batch_size.observe(result.records)

    def _on_downstream(self, up: bool, reason: str) -> None:
        self.health.downstream_reason = reason
        self.health.downstream_up = up

    def _on_commit(self, error: KafkaError | None, tps: list[TopicPartition]) -> None:
        self._processor.committer.on_commit(error, tps)

    def _on_stats(self, stats_json: str) -> None:
        apply_statistics(stats_json, self.metrics, self._processor.partitions)

    def _on_kafka_error(self, error: KafkaError) -> None:
        self._processor.on_error(error)
