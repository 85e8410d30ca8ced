"""Per-partition committed offset and lag from librdkafka's statistics (``stats_cb``)."""

from __future__ import annotations

import json
from typing import Any

from tagging_sidecar.observe.metrics import Metrics


def partition_lag(stats: dict[str, Any]) -> dict[tuple[str, int], tuple[int, int]]:
    """(topic, partition) -> (committed offset, lag) for every assigned partition with a known
    committed offset. The lag is log-end offset minus committed offset, as consumers see it."""
    result: dict[tuple[str, int], tuple[int, int]] = {}
    for topic, tstats in stats.get("topics", {}).items():
        for pid, pstats in tstats.get("partitions", {}).items():
            partition = int(pid)
            if partition < 0 or pstats.get("fetch_state") in (None, "none", "stopped"):
                continue
            committed = int(pstats.get("committed_offset", -1001))
            high = int(pstats.get("hi_offset", -1))
            if committed < 0 or high < 0:
                continue
            result[(topic, partition)] = (committed, max(0, high - committed))
    return result


def apply_statistics(stats_json: str, metrics: Metrics) -> None:
    """Update the lag gauges from one statistics document."""
    try:
        stats = json.loads(stats_json)
    except json.JSONDecodeError:
        return
    for (topic, partition), (_committed, lag) in partition_lag(stats).items():
        metrics.consumer_lag.labels(topic, str(partition)).set(lag)
