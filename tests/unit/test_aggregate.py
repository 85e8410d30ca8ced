"""The parent's one endpoint over several children: real HTTP on loopback, no Kafka."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tagging_sidecar.observe.aggregate import Child, ChildrenMetrics, ChildrenProbes
from tagging_sidecar.observe.health import HealthServer, HealthState
from tagging_sidecar.observe.metrics import Metrics

from .test_health import get


class FakeChild:
    """What a child process serves: its own HealthState and Metrics on a loopback port."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.serving = True
        self._start()

    def _start(self) -> None:
        self.state = HealthState(stall_timeout=60, tick_timeout=15)
        self.state.in_group = True
        self.state.downstream_up = True
        self.metrics = Metrics()
        self.http = HealthServer("127.0.0.1", 0, self.state, self.metrics.registry)
        self.http.start()

    def view(self) -> Child:
        return Child(self.name, self.http.port if self.serving else None)

    def restart(self) -> None:
        """A new incarnation: fresh metrics (counters at 0) on a new port."""
        self.http.stop()
        self._start()


class Parent:
    def __init__(self, children: list[FakeChild]) -> None:
        self.children = children
        local = CollectorRegistry()
        self.merged = ChildrenMetrics(self.views, local)
        registry = CollectorRegistry()
        registry.register(self.merged)
        probes = ChildrenProbes(self.views, lambda: (True, "ok"))
        self.http = HealthServer("127.0.0.1", 0, probes, registry)
        self.http.start()

    def views(self) -> list[Child]:
        return [child.view() for child in self.children]

    def get(self, path: str) -> tuple[int, str]:
        return get(f"http://127.0.0.1:{self.http.port}{path}")

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, body = self.get("/metrics")
        assert status == 200
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body)
            for s in family.samples
        }


@pytest.fixture
def parent() -> Iterator[Parent]:
    running = Parent([FakeChild("process 0"), FakeChild("process 1")])
    yield running
    running.http.stop()
    for child in running.children:
        child.http.stop()


def test_ready_only_when_every_child_is(parent: Parent) -> None:
    assert parent.get("/readyz") == (200, "ok\n")
    parent.children[1].state.in_group = False
    status, body = parent.get("/readyz")
    assert status == 503
    assert body == "process 1: not in the consumer group yet\n"
    parent.children[0].serving = False
    status, body = parent.get("/readyz")
    assert status == 503
    assert "process 0: not serving yet" in body
    assert "process 1: not in the consumer group yet" in body
    assert parent.get("/livez") == (200, "ok\n")


def test_metrics_are_the_sum_of_the_children(parent: Parent) -> None:
    a, b = parent.children
    a.metrics.records_consumed.inc(30)
    b.metrics.records_consumed.inc(12)
    a.metrics.batch_size.observe(3)
    b.metrics.batch_size.observe(300)
    a.metrics.committed_offset.labels("t", "0").set(5)
    b.metrics.committed_offset.labels("t", "1").set(7)
    a.metrics.watermark_stalled.set(3)
    b.metrics.watermark_stalled.set(9)
    m = parent.scrape()
    assert m[("tagging_sidecar_records_consumed_total", ())] == 42
    assert m[("tagging_sidecar_batch_size_records_count", ())] == 2
    assert m[("tagging_sidecar_batch_size_records_bucket", (("le", "5.0"),))] == 1
    assert m[("tagging_sidecar_batch_size_records_sum", ())] == 303
    assert m[("tagging_sidecar_committed_offset", (("partition", "0"), ("topic", "t")))] == 5
    assert m[("tagging_sidecar_committed_offset", (("partition", "1"), ("topic", "t")))] == 7
    assert m[("tagging_sidecar_watermark_stalled_seconds", ())] == 9
    assert m[("tagging_sidecar_process_resident_memory_bytes", ())] > 0


def test_a_restarted_child_does_not_make_counters_go_down(parent: Parent) -> None:
    a, b = parent.children
    a.metrics.records_forwarded.inc(10)
    b.metrics.records_forwarded.inc(25)
    b.metrics.batch_size.observe(25)
    b.metrics.committed_offset.labels("t", "1").set(25)
    assert parent.scrape()[("tagging_sidecar_records_forwarded_total", ())] == 35
    b.metrics.records_forwarded.inc(5)  # after the last scrape: retire() scrapes once more
    parent.merged.retire(b.view())
    b.restart()
    b.metrics.records_forwarded.inc(1)
    m = parent.scrape()
    assert m[("tagging_sidecar_records_forwarded_total", ())] == 41
    assert m[("tagging_sidecar_batch_size_records_count", ())] == 1
    # Gauges of the old incarnation are not carried: its partitions are gone with it.
    assert ("tagging_sidecar_committed_offset", (("partition", "1"), ("topic", "t"))) not in m
