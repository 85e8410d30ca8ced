"""Prometheus metrics of one sidecar process (namespace ``tagging_sidecar``).

Every metric is documented in the README's Metrics section; keep the two in step.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

NAMESPACE = "tagging_sidecar"

#: reasons a record is counted in ``records_failed_total``
FAILURE_REASONS = ("decode", "tombstone", "rejected", "retries_exhausted")

#: the ``stage`` label values of ``stage_seconds``, in the order a record goes through them
STAGES = ("consumer_batch", "pool_queue", "call", "commit")

_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# A hand-off inside the process takes microseconds; a call with retries, or a commit waiting
# for an earlier record, can take minutes.
_STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, *_LATENCY_BUCKETS, 60, 300)
# Records a few ms old on live traffic, hours old when a backlog is drained.
_AGE_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    900,
    3600,
    21600,
)


class Metrics:
    """All metrics, registered in ``registry`` (a private one per instance by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ns = NAMESPACE
        self._record_metrics(r, ns)
        self._pool_metrics(r, ns)
        self._kafka_metrics(r, ns)
        self._stage_metrics(r, ns)
        # Memory, CPU seconds and open file descriptors of this process.
        ProcessCollector(namespace=ns, registry=r)
        #: every gauge with ``topic`` and ``partition`` labels, cleared by forget_partitions
        self._partition_gauges = (self.committed_offset, self.consumer_lag)
        # Export every known label value from the start, so rates and alerts see a zero.
        for reason in FAILURE_REASONS:
            self.records_failed.labels(reason=reason)
        self.records_dead_lettered.labels(reason="undeliverable")
        for reason in ("tombstone", "delivered_before"):
            self.records_skipped.labels(reason=reason)
        for direction in ("up", "down"):
            self.pool_scale_events.labels(direction=direction)
        for stage in STAGES:
            self.stage_seconds.labels(stage=stage)

    def _record_metrics(self, r: CollectorRegistry, ns: str) -> None:
        """Records in and out, and the calls to the downstream."""
        self.records_consumed = Counter(
            "records_consumed", "Records read from Kafka.", namespace=ns, registry=r
        )
        self.records_forwarded = Counter(
            "records_forwarded",
            "Records acknowledged by the gRPC service.",
            namespace=ns,
            registry=r,
        )
        self.records_failed = Counter(
            "records_failed",
            "Records that could not be decoded or were rejected, by reason.",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.records_skipped = Counter(
            "records_skipped",
            "Records committed without forwarding, by reason (tombstone, delivered_before).",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.records_retried = Counter(
            "records_retried",
            "Records sent again after a retryable gRPC failure.",
            namespace=ns,
            registry=r,
        )
        self.records_dead_lettered = Counter(
            "records_dead_lettered",
            "Records written to the dead-letter topic, by reason.",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.batch_size = Histogram(
            "batch_size_records",
            "Records per gRPC call.",
            namespace=ns,
            registry=r,
            buckets=_BATCH_BUCKETS,
        )
        self.rpc_duration = Histogram(
            "rpc_duration_seconds",
            "Duration of one client-streaming call, by final status code.",
            ["code"],
            namespace=ns,
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )

    def _pool_metrics(self, r: CollectorRegistry, ns: str) -> None:
        """The worker pool and what is in flight."""
        self.workers_active = Gauge(
            "workers_active", "Pool workers running.", namespace=ns, registry=r
        )
        self.workers_wanted = Gauge(
            "workers_wanted", "Pool workers the backlog calls for.", namespace=ns, registry=r
        )
        self.pool_backlog = Gauge(
            "pool_backlog_records",
            "Records queued in the pool, not yet taken by a worker.",
            namespace=ns,
            registry=r,
        )
        self.pool_scale_events = Counter(
            "pool_scale_events",
            "Workers started (up) and stopped (down).",
            ["direction"],
            namespace=ns,
            registry=r,
        )
        self.inflight_records = Gauge(
            "inflight_records",
            "Records consumed and not yet delivered or dead-lettered.",
            namespace=ns,
            registry=r,
        )
        self.awaiting_commit = Gauge(
            "records_awaiting_commit",
            "Records delivered or dead-lettered whose commit has not landed yet: what a crash "
            "now would deliver again (with the records in flight).",
            namespace=ns,
            registry=r,
        )
        self.inflight_bytes = Gauge(
            "inflight_bytes", "Bytes of the in-flight records.", namespace=ns, registry=r
        )

    def _kafka_metrics(self, r: CollectorRegistry, ns: str) -> None:
        """Commits, partitions, lag and freshness."""
        self.commit_duration = Histogram(
            "commit_duration_seconds",
            "Duration of offset commits.",
            namespace=ns,
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.commit_failures = Counter(
            "commit_failures", "Offset commits that failed.", namespace=ns, registry=r
        )
        self.committed_offset = Gauge(
            "committed_offset",
            "Last committed offset (next offset to read), per partition.",
            ["topic", "partition"],
            namespace=ns,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "consumer_lag_records",
            "Log-end offset minus committed offset, per partition.",
            ["topic", "partition"],
            namespace=ns,
            registry=r,
        )
        self.record_age = Histogram(
            "record_age_seconds",
            "Time from the Kafka timestamp of a record to its acknowledgement by the gRPC "
            "service, taken when the acknowledgement arrives: two observations per batch a "
            "worker sent, its oldest and its newest acknowledged record (of the first and "
            "last record of each chunk).",
            namespace=ns,
            registry=r,
            buckets=_AGE_BUCKETS,
        )
        self.partitions_paused = Gauge(
            "partitions_paused", "Assigned partitions currently paused.", namespace=ns, registry=r
        )
        self.watermark_stalled = Gauge(
            "watermark_stalled_seconds",
            "Seconds since the commit watermark last moved while records were in flight.",
            namespace=ns,
            registry=r,
        )

    def _stage_metrics(self, r: CollectorRegistry, ns: str) -> None:
        """Where a record's time goes, stage by stage (see :mod:`tagging_sidecar.kafka.stages`)."""
        self.stage_seconds = Histogram(
            "stage_seconds",
            "Seconds spent in each stage, one observation per batch a worker sent and stage, "
            "timed on the batch's first chunk (its oldest record): consumer_batch from "
            "consume() returning it to its hand-off to the pool; pool_queue until a worker "
            "took it into a call; call until the server acknowledged it, retries included; "
            "commit until the commit that covers it landed.",
            ["stage"],
            namespace=ns,
            registry=r,
            buckets=_STAGE_BUCKETS,
        )

    def forget_partitions(self, tps: Iterable[tuple[str, int]]) -> None:
        """Drop the per-partition series of partitions this consumer no longer owns (revoked or
        lost), so that they do not go on reporting a stale offset and lag."""
        for topic, partition in tps:
            for gauge in self._partition_gauges:
                gauge.remove(topic, str(partition))

    def observe_record_ages(self, timestamps_ms: Sequence[int], now: float | None = None) -> None:
        """Observe the age of the oldest and the newest of ``timestamps_ms`` (Kafka timestamps in
        milliseconds of records the server acknowledged; ``message.timestamp()[1]``) at ``now``,
        the wall-clock time of the acknowledgement.

        Two observations per batch rather than one per record: this runs on the hot path, and
        min/max over a list cost a fraction of a histogram update per record. Timestamps that
        are not set (0 or negative) are skipped; a producer clock ahead of ours counts as 0 s.
        """
        if not timestamps_ms:
            return
        oldest = min(timestamps_ms)
        if oldest <= 0:
            timestamps_ms = [t for t in timestamps_ms if t > 0]
            if not timestamps_ms:
                return
            oldest = min(timestamps_ms)
        newest = max(timestamps_ms)
        now_ms = (time.time() if now is None else now) * 1000.0
        self.record_age.observe(max(0.0, now_ms - oldest) / 1000.0)
        if newest != oldest:
            self.record_age.observe(max(0.0, now_ms - newest) / 1000.0)
