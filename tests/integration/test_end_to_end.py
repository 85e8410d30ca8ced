"""The sidecar end to end: a real broker, the real sidecar process, a real gRPC sink."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from tagging_sidecar.produce import produce
from tagging_sidecar.sink import SinkServer

from ..support.harness import (
    SidecarProcess,
    all_committed,
    eventually,
    offsets,
    read_ids,
    sidecar_env,
)

pytestmark = pytest.mark.integration


def test_every_record_is_forwarded_and_committed_then_sigterm_exits_cleanly(
    kafka_bootstrap: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    sink: SinkServer,
    tmp_path: Path,
) -> None:
    topic = topic_factory(3)
    ids = produce({"bootstrap.servers": kafka_bootstrap}, topic, 10_000)
    received = tmp_path / "received.txt"
    env = sidecar_env(kafka_bootstrap, topic, group_id, f"127.0.0.1:{sink.port}")
    sidecar = SidecarProcess(env, tmp_path / "sidecar.log")
    try:
        eventually(lambda: len(set(read_ids(received))) >= len(ids), timeout=180)
        eventually(all_committed(kafka_bootstrap, group_id, topic, 3), timeout=60)
    finally:
        status = sidecar.terminate(timeout=60)
    assert status == 0, sidecar.log()[-3000:]
    assert set(read_ids(received)) == set(ids)
    committed, ends = offsets(kafka_bootstrap, group_id, topic, 3)
    assert committed == ends
    assert sum(ends) == 10_000
    log = sidecar.log()
    assert '"sidecar stopped"' in log
    # Records are never logged: no produced id appears in the sidecar's output.
    assert not any(i in log for i in ids[:50])


def test_several_processes_share_the_partitions(
    kafka_bootstrap: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    sink: SinkServer,
    tmp_path: Path,
) -> None:
    topic = topic_factory(4)
    ids = produce({"bootstrap.servers": kafka_bootstrap}, topic, 4000)
    received = tmp_path / "received.txt"
    env = sidecar_env(kafka_bootstrap, topic, group_id, f"127.0.0.1:{sink.port}", PROCESSES="2")
    sidecar = SidecarProcess(env, tmp_path / "sidecar.log")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    def members() -> int:
        description = admin.describe_consumer_groups([group_id])[group_id].result(timeout=10)
        return len(description.members)

    try:
        eventually(lambda: members() == 2, timeout=60)
        eventually(lambda: set(read_ids(received)) >= set(ids), timeout=120)
        eventually(all_committed(kafka_bootstrap, group_id, topic, 4), timeout=60)
    finally:
        status = sidecar.terminate(timeout=90)
    log = sidecar.log()
    assert status == 0, log[-3000:]
    assert '"sidecar processes started"' in log
    assert log.count('"sidecar stopped"') == 2
