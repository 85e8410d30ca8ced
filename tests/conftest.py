"""Shared fixtures: a real Kafka broker for the session, topics, groups and a real gRPC sink."""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tagging_sidecar.observe.logs import configure_logging
from tagging_sidecar.sink import SinkServer

from .support import gosink
from .support.harness import SidecarProcess, create_topic
from .support.kafka_broker import LocalKafka

configure_logging("console", "WARNING")


@pytest.fixture(scope="session", autouse=True)
def go_sink_built_in_the_background() -> Iterator[None]:
    """Start building the Go sink at once, so that on a machine that never built it the compile
    overlaps the tests that run before the first one needing it (which waits for the build)."""
    if gosink.go_executable() is None:
        yield
        return

    def build() -> None:
        # A failure is reported by the test that needs the binary, which builds again.
        with contextlib.suppress(Exception):
            gosink.build()

    builder = threading.Thread(target=build, name="gosink-build", daemon=True)
    builder.start()
    yield
    builder.join(300)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running broker: ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a local one for the session."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    broker = LocalKafka(tmp_path_factory.mktemp("kafka"))
    bootstrap = broker.start()
    try:
        yield bootstrap
    finally:
        broker.stop()


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Callable[[int], str]:
    """Create a fresh topic with the given number of partitions; return its name."""

    def make(partitions: int = 3) -> str:
        name = f"t-{uuid.uuid4().hex[:10]}"
        create_topic(kafka_bootstrap, name, partitions)
        return name

    return make


@pytest.fixture(autouse=True)
def no_sidecar_left_running() -> Iterator[None]:
    """Kill any sidecar process a test started and did not stop (for example after a failure)."""
    yield
    while SidecarProcess.started:
        SidecarProcess.started.pop().cleanup()


@pytest.fixture
def group_id() -> str:
    """A consumer group no other test uses."""
    return f"g-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SinkServer]:
    """The reference Havilah server on a free loopback port, recording ids to a file."""
    server = SinkServer("127.0.0.1:0", record_path=tmp_path / "received.txt")
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=0.5)
