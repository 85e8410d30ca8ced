"""Metrics and probes of a running sidecar, checked against what actually happened."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tagging_sidecar.observe.metrics import STAGES
from tagging_sidecar.produce import produce
from tagging_sidecar.sink import SinkServer

from ..support.harness import (
    eventually,
    histogram_quantile,
    http_get,
    metric_value,
    read_ids,
    scrape,
    stage_quantiles,
)
from ..support.inprocess import RunningSidecar, make_settings

pytestmark = pytest.mark.integration


def test_metrics_match_what_happened(
    kafka_bootstrap: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    sink: SinkServer,
    tmp_path: Path,
) -> None:
    topic = topic_factory(3)
    count = 5000
    produce({"bootstrap.servers": kafka_bootstrap}, topic, count)
    settings = make_settings(
        kafka_bootstrap,
        topic,
        group_id,
        f"127.0.0.1:{sink.port}",
        kafka={"properties": {"statistics.interval.ms": 500}},
    )
    with RunningSidecar(settings) as running:
        eventually(lambda: running.sidecar.http_port is not None, timeout=30)
        port = running.sidecar.http_port
        assert port is not None
        eventually(lambda: len(set(read_ids(tmp_path / "received.txt"))) == count)

        def settled() -> bool:
            m = scrape(port)
            return (
                m.get("tagging_sidecar_records_forwarded_total") == count
                and m.get("tagging_sidecar_committed_offset") == count
                and m.get("tagging_sidecar_consumer_lag_records", -1) == 0
                and m.get("tagging_sidecar_inflight_records") == 0
                and m.get("tagging_sidecar_records_awaiting_commit") == 0
            )

        eventually(settled, timeout=60)
        after = scrape(port)
        running.stop()
    assert after["tagging_sidecar_records_consumed_total"] == count
    assert after["tagging_sidecar_records_failed_total"] == 0
    assert after["tagging_sidecar_batch_size_records_sum"] == count
    assert after["tagging_sidecar_rpc_duration_seconds_count"] >= 1
    assert after["tagging_sidecar_pool_scale_events_total"] >= 1
    assert after["tagging_sidecar_commit_duration_seconds_count"] >= 1
    assert after["tagging_sidecar_partitions_paused"] == 0
    assert after["tagging_sidecar_watermark_stalled_seconds"] == 0


def test_every_stage_is_timed_and_agrees_with_the_record_age(
    kafka_bootstrap: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    sink: SinkServer,
) -> None:
    topic = topic_factory(2)
    count = 3000
    produce({"bootstrap.servers": kafka_bootstrap}, topic, count)
    settings = make_settings(kafka_bootstrap, topic, group_id, f"127.0.0.1:{sink.port}")
    with RunningSidecar(settings) as running:
        eventually(lambda: running.sidecar.http_port is not None, timeout=30)
        url = f"http://127.0.0.1:{running.sidecar.http_port}/metrics"

        def committed() -> bool:
            m = scrape(running.sidecar.http_port or 0)
            return m.get("tagging_sidecar_committed_offset") == count

        eventually(committed, timeout=60)
        status, text = http_get(url)
        running.stop()
    assert status == 200
    for stage in STAGES:
        observed = metric_value(text, "tagging_sidecar_stage_seconds_count", {"stage": stage})
        assert observed is not None and observed > 0, stage
    medians = stage_quantiles(text, 0.5)
    # A record's age at its acknowledgement holds its time in Kafka before consume() and the
    # three stages up to the acknowledgement (commit comes after), each call's oldest record
    # at least as much as its first chunk spent in them: their medians add up to no more
    # than the high end of the ages.
    before_ack = medians["consumer_batch"] + medians["pool_queue"] + medians["call"]
    oldest_ages = histogram_quantile(text, "tagging_sidecar_record_age_seconds", 0.99)
    assert 0 < before_ack <= oldest_ages
    assert medians["commit"] > 0


def partition_series(sidecar: RunningSidecar, name: str) -> set[str]:
    """Partitions that have a ``name`` series in this sidecar's registry."""
    return {
        sample.labels["partition"]
        for family in sidecar.sidecar.metrics.registry.collect()
        for sample in family.samples
        if sample.name == name
    }


def test_per_partition_series_follow_the_assignment(
    kafka_bootstrap: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    sink: SinkServer,
    tmp_path: Path,
) -> None:
    topic = topic_factory(2)
    produce({"bootstrap.servers": kafka_bootstrap}, topic, 200)
    settings = make_settings(
        kafka_bootstrap,
        topic,
        group_id,
        f"127.0.0.1:{sink.port}",
        kafka={"properties": {"statistics.interval.ms": 200}},
    )
    lag = "tagging_sidecar_consumer_lag_records"
    offset = "tagging_sidecar_committed_offset"
    with RunningSidecar(settings) as first:
        eventually(
            lambda: partition_series(first, lag) == partition_series(first, offset) == {"0", "1"}
        )
        with RunningSidecar(settings) as second:
            # Cooperative rebalance: one partition moves to the second member; the first stops
            # reporting it, although librdkafka's statistics may still describe it.
            eventually(lambda: len(partition_series(first, offset)) == 1, timeout=60)
            kept = partition_series(first, offset)
            moved = {"0", "1"} - kept
            produce({"bootstrap.servers": kafka_bootstrap}, topic, 200)  # the second commits
            eventually(
                lambda: partition_series(second, offset) == partition_series(second, lag) == moved
            )
            assert partition_series(first, lag) == kept
            assert partition_series(first, offset) == kept


def test_readyz_follows_the_downstream_health_service(
    kafka_bootstrap: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    sink: SinkServer,
) -> None:
    topic = topic_factory(1)
    settings = make_settings(kafka_bootstrap, topic, group_id, f"127.0.0.1:{sink.port}")
    sink.set_serving(False)
    with RunningSidecar(settings) as running:
        eventually(lambda: running.sidecar.http_port is not None, timeout=30)
        readyz = f"http://127.0.0.1:{running.sidecar.http_port}/readyz"

        def answer() -> tuple[int, str]:
            return http_get(readyz)

        eventually(lambda: "NOT_SERVING" in answer()[1], timeout=60)
        status, body = answer()
        assert status == 503
        assert f"127.0.0.1:{sink.port}" in body
        sink.set_serving(True)
        eventually(lambda: answer() == (200, "ok\n"), timeout=60)
