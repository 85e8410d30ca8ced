"""Per-partition committed offset and lag from librdkafka's statistics (``stats_cb``)."""

from __future__ import annotations

import json
from collections.abc import Container
from typing import Any

from tagging_sidecar.observe.metrics import Metrics


def partition_lag(stats: dict[str, Any]) -> dict[tuple[str, int], tuple[int, int]]:
    """(topic, partition) -> (committed offset, lag) for every fetched partition with a known
    committed offset and lag.

    The lag is librdkafka's own ``consumer_lag`` when it reports one: it counts from the last
    stable offset under ``isolation.level=read_committed``, so a transactional topic drains to
    0 (its high watermark stays one past the last commit marker). Otherwise it is the high
    watermark minus the committed offset.
    """
    result: dict[tuple[str, int], tuple[int, int]] = {}
    for topic, tstats in stats.get("topics", {}).items():
        for pid, pstats in tstats.get("partitions", {}).items():
            partition = int(pid)
            if partition < 0 or pstats.get("fetch_state") in (None, "none", "stopped"):
                continue
            committed = int(pstats.get("committed_offset", -1001))
            if committed < 0:
                continue
            lag = int(pstats.get("consumer_lag", -1))
            if lag < 0:
                high = int(pstats.get("hi_offset", -1))
                if high < 0:
                    continue
                lag = high - committed
            result[(topic, partition)] = (committed, max(0, lag))
    return result


def apply_statistics(
    stats_json: str, metrics: Metrics, assigned: Container[tuple[str, int]]
) -> None:
    """Update the lag gauges from one statistics document, for ``assigned`` partitions only.

    librdkafka may still describe a partition for a while after it was revoked; exporting it
    would bring back a series that :meth:`Metrics.forget_partitions` just removed.
    """
    try:
        stats = json.loads(stats_json)
    except json.JSONDecodeError:
        return
    for tp, (_committed, lag) in partition_lag(stats).items():
        if tp in assigned:
            metrics.consumer_lag.labels(tp[0], str(tp[1])).set(lag)
