"""TAGGING_PROCESSES > 1 against a real broker and sink: one endpoint, wedged children restarted."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from tagging_sidecar.produce import produce
from tagging_sidecar.sink import SinkServer
from tagging_sidecar.supervisor import Supervisor

from ..support.faults import wedge_on_marker
from ..support.harness import all_committed, all_received, eventually, http_get, scrape
from ..support.inprocess import make_settings

pytestmark = pytest.mark.integration


def test_two_processes_behind_one_port_and_a_wedged_one_is_restarted(
    kafka_bootstrap: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    sink: SinkServer,
    tmp_path: Path,
) -> None:
    topic = topic_factory(4)
    settings = make_settings(
        kafka_bootstrap,
        topic,
        group_id,
        f"127.0.0.1:{sink.port}",
        processes=2,
        # A killed member leaves the group after its session timeout: keep that short.
        kafka={"properties": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}},
    )
    marker = tmp_path / "wedge"
    supervisor = Supervisor(settings, child=partial(wedge_on_marker, marker), heartbeat_timeout=3)
    stop = threading.Event()
    statuses: list[int] = []
    thread = threading.Thread(target=lambda: statuses.append(supervisor.run(stop)), daemon=True)
    thread.start()
    try:
        eventually(lambda: supervisor.http_port is not None, timeout=30)
        port = supervisor.http_port
        assert port is not None
        base = f"http://127.0.0.1:{port}"
        # While the child restarts, the parent may drop a probe: ask until it answers ready.
        eventually(lambda: http_get(base + "/readyz") == (200, "ok\n"), timeout=90)

        count = 2000
        ids = produce({"bootstrap.servers": kafka_bootstrap}, topic, count)
        eventually(all_received(tmp_path / "received.txt", ids), timeout=90)
        eventually(lambda: scrape(port).get("tagging_sidecar_records_forwarded_total") == count)
        merged = scrape(port)
        per_child = [scrape(child.port) for child in supervisor.children() if child.port]
        assert len(per_child) == 2
        consumed = [m["tagging_sidecar_records_consumed_total"] for m in per_child]
        assert all(c > 0 for c in consumed)  # both children did part of the work
        assert merged["tagging_sidecar_records_consumed_total"] == sum(consumed) == count
        assert merged["tagging_sidecar_process_restarts_total"] == 0

        marker.touch()  # one child's poll loop blocks for good
        eventually(lambda: scrape(port)["tagging_sidecar_process_restarts_total"] == 1, 60)
        assert not marker.exists()
        # The restarted child starts its counters at 0; the sum does not go down.
        assert scrape(port)["tagging_sidecar_records_forwarded_total"] >= count
        # While the child restarts, the parent may drop a probe: ask until it answers ready.
        eventually(lambda: http_get(base + "/readyz") == (200, "ok\n"), timeout=90)

        more = produce({"bootstrap.servers": kafka_bootstrap}, topic, 1000)
        eventually(all_received(tmp_path / "received.txt", more), timeout=90)
        eventually(all_committed(kafka_bootstrap, group_id, topic, 4), timeout=60)
        assert scrape(port)["tagging_sidecar_records_forwarded_total"] >= count + 1000
    finally:
        stop.set()
        thread.join(90)
    assert statuses == [0]
