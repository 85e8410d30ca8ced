"""Metrics of one process: per-partition series follow the assignment; process and age metrics."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tagging_sidecar.kafka.stats import apply_statistics, partition_lag
from tagging_sidecar.observe.metrics import Metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(f"tagging_sidecar_{name}", labels)


def statistics(partitions: dict[int, dict[str, Any]], topic: str = "t") -> str:
    return json.dumps(
        {
            "topics": {
                topic: {
                    "partitions": {
                        str(p): {"fetch_state": "active", **fields}
                        for p, fields in partitions.items()
                    }
                    | {"-1": {"fetch_state": "none"}}
                }
            }
        }
    )


def test_forget_partitions_removes_their_series() -> None:
    metrics = Metrics()
    for partition in (0, 1):
        metrics.committed_offset.labels("t", str(partition)).set(10 + partition)
        metrics.consumer_lag.labels("t", str(partition)).set(5)
    metrics.forget_partitions([("t", 0), ("t", 7)])  # 7 was never seen: no error
    assert sample(metrics, "committed_offset", topic="t", partition="0") is None
    assert sample(metrics, "consumer_lag_records", topic="t", partition="0") is None
    assert sample(metrics, "committed_offset", topic="t", partition="1") == 11
    assert sample(metrics, "consumer_lag_records", topic="t", partition="1") == 5


def test_statistics_of_a_revoked_partition_do_not_bring_its_lag_back() -> None:
    metrics = Metrics()
    doc = statistics(
        {
            0: {"committed_offset": 100, "hi_offset": 130, "consumer_lag": 30},
            1: {"committed_offset": 50, "hi_offset": 52, "consumer_lag": 2},
        }
    )
    apply_statistics(doc, metrics, assigned={("t", 0), ("t", 1)})
    assert sample(metrics, "consumer_lag_records", topic="t", partition="1") == 2
    metrics.forget_partitions([("t", 1)])  # revoked
    apply_statistics(doc, metrics, assigned={("t", 0)})  # librdkafka still describes it
    assert sample(metrics, "consumer_lag_records", topic="t", partition="1") is None
    assert sample(metrics, "consumer_lag_records", topic="t", partition="0") == 30


def test_lag_prefers_librdkafkas_consumer_lag() -> None:
    # read_committed on a transactional topic: the high watermark is one past the last stable
    # offset (the commit marker), librdkafka's consumer_lag counts from the stable offset.
    doc = json.loads(
        statistics(
            {
                0: {"committed_offset": 41, "hi_offset": 42, "ls_offset": 41, "consumer_lag": 0},
                1: {"committed_offset": 10, "hi_offset": 15},  # older librdkafka: no field
                2: {"committed_offset": -1001, "hi_offset": 15, "consumer_lag": -1},
            }
        )
    )
    assert partition_lag(doc) == {("t", 0): (41, 0), ("t", 1): (10, 5)}


def test_process_metrics_are_exported() -> None:
    metrics = Metrics()
    resident = sample(metrics, "process_resident_memory_bytes")
    assert resident is not None and resident > 0
    assert sample(metrics, "process_cpu_seconds_total") is not None
    fds = sample(metrics, "process_open_fds")
    assert fds is not None and fds > 0


def test_record_ages_observe_the_oldest_and_newest_of_a_batch() -> None:
    metrics = Metrics()
    now = 1_700_000_000.0
    stamps = [int((now - age) * 1000) for age in (0.02, 7.0, 3.0)]
    metrics.observe_record_ages(stamps, now=now)
    assert sample(metrics, "record_age_seconds_count") == 2
    assert sample(metrics, "record_age_seconds_sum") == pytest.approx(7.02, abs=0.002)
    assert sample(metrics, "record_age_seconds_bucket", le="0.025") == 1
    assert sample(metrics, "record_age_seconds_bucket", le="5.0") == 1
    assert sample(metrics, "record_age_seconds_bucket", le="10.0") == 2
    # Unset timestamps are skipped; a producer clock ahead of ours counts as age 0.
    metrics.observe_record_ages([0, -1], now=now)
    metrics.observe_record_ages([], now=now)
    assert sample(metrics, "record_age_seconds_count") == 2
    metrics.observe_record_ages([0, int((now + 5) * 1000)], now=now)
    assert sample(metrics, "record_age_seconds_count") == 3
    assert sample(metrics, "record_age_seconds_bucket", le="0.005") == 1
