"""Downstream readiness from grpc.health.v1, against real in-process gRPC servers on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from tagging_sidecar.config import GrpcSettings
from tagging_sidecar.forward import DownstreamHealth, connect
from tagging_sidecar.observe.health import HealthServer, HealthState

from ..support.harness import eventually
from .test_health import get


class Downstream:
    """A gRPC server on a free loopback port, with or without the health service."""

    def __init__(self, with_health: bool) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.health: health.HealthServicer | None = None
        if with_health:
            self.health = health.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def serving(self, status: int, service: str = "") -> None:
        assert self.health is not None
        self.health.set(service, status)


class Probe:
    """The sidecar's readiness wiring without Kafka: client + DownstreamHealth -> /readyz."""

    def __init__(self, port: int) -> None:
        self.state = HealthState(stall_timeout=60, tick_timeout=15)
        self.state.in_group = True
        self.http = HealthServer("127.0.0.1", 0, self.state, CollectorRegistry())
        self.http.start()
        self.target = f"127.0.0.1:{port}"
        self.downstream = DownstreamHealth(self.target, self._report, interval=0.05)
        self.client = connect(GrpcSettings(target=self.target), on_state=self.downstream.on_state)
        self.client.background(self.downstream.watch)

    def _report(self, up: bool, reason: str) -> None:
        self.state.downstream_up = up
        self.state.downstream_reason = reason

    def readyz(self) -> tuple[int, str]:
        return get(f"http://127.0.0.1:{self.http.port}/readyz")

    def close(self) -> None:
        self.client.close()
        self.http.stop()


@pytest.fixture
def servers() -> Iterator[list[Downstream]]:
    started: list[Downstream] = []
    yield started
    for downstream in started:
        downstream.server.stop(None)


def test_not_serving_makes_readyz_fail_with_the_downstream_named(
    servers: list[Downstream],
) -> None:
    downstream = Downstream(with_health=True)
    servers.append(downstream)
    downstream.serving(health_pb2.HealthCheckResponse.NOT_SERVING)
    probe = Probe(downstream.port)
    try:
        eventually(lambda: probe.readyz()[0] == 503 and "NOT_SERVING" in probe.readyz()[1])
        status, body = probe.readyz()
        assert status == 503
        assert probe.target in body and "grpc.health.v1" in body
        downstream.serving(health_pb2.HealthCheckResponse.SERVING)
        eventually(lambda: probe.readyz() == (200, "ok\n"))
    finally:
        probe.close()


def test_the_havilah_service_status_wins_over_the_servers(servers: list[Downstream]) -> None:
    downstream = Downstream(with_health=True)
    servers.append(downstream)
    downstream.serving(health_pb2.HealthCheckResponse.SERVING)
    downstream.serving(health_pb2.HealthCheckResponse.NOT_SERVING, "tagging.v1.Havilah")
    probe = Probe(downstream.port)
    try:
        eventually(lambda: "NOT_SERVING" in probe.readyz()[1])
        assert probe.readyz()[0] == 503
    finally:
        probe.close()


def test_without_a_health_service_connectivity_decides(servers: list[Downstream]) -> None:
    downstream = Downstream(with_health=False)
    servers.append(downstream)
    probe = Probe(downstream.port)
    try:
        eventually(lambda: probe.readyz() == (200, "ok\n"))
        downstream.server.stop(None)
        eventually(lambda: probe.readyz()[0] == 503)
        assert "not reachable" in probe.readyz()[1]
        assert probe.target in probe.readyz()[1]
    finally:
        probe.close()
