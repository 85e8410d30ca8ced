"""Metrics and probes of a running sidecar, checked against what actually happened."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tagging_sidecar.produce import produce
from tagging_sidecar.sink import SinkServer

from ..support.harness import eventually, read_ids, scrape
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
