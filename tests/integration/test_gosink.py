"""The Go sink (bench/gosink) answers the sidecar's own client in both modes, and counts right."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tagging_sidecar.config import GrpcSettings, InputFormat
from tagging_sidecar.forward import connect
from tagging_sidecar.produce import encode, make_record

from ..support.gosink import GoSink, require_go

pytestmark = pytest.mark.integration


def _payloads(run: str, count: int) -> list[bytes]:
    return [encode(make_record(run, i), InputFormat.PROTOBUF) for i in range(count)]


@pytest.mark.parametrize(
    ("mode", "single_only", "single_calls", "batch_calls"),
    [
        ("batch", False, 0, 2),
        ("single", False, 2, 0),
        # The batch call answered UNIMPLEMENTED counts as no call; then both go single.
        ("batch", True, 2, 0),
    ],
)
def test_the_go_sink_receives_every_record_from_the_sidecars_client(
    tmp_path: Path, mode: str, single_only: bool, single_calls: int, batch_calls: int
) -> None:
    require_go()
    ids_file = tmp_path / "ids.txt"
    run = uuid.uuid4().hex[:8]
    first, second = _payloads(run, 300), _payloads(run, 700)[300:]
    with GoSink(single_only=single_only, ids_file=ids_file) as sink:
        settings = GrpcSettings.model_validate(
            {"target": sink.target, "mode": mode, "retry_initial_backoff": 0.01}
        )
        client = connect(settings)
        try:
            client.wait_ready(10)
            assert client.deliver(first) == []
            assert client.deliver(second) == []
        finally:
            client.close()
        stats = sink.stats()
        expected = {f"{run}-{i}" for i in range(700)}
        assert ids_file.read_text().split() == sorted(expected, key=lambda s: int(s.split("-")[1]))
        assert stats["records"] == 700
        assert stats["unique_ids"] == 700
        assert (stats["single_calls"], stats["batch_calls"]) == (single_calls, batch_calls)
        assert stats["latency_ms"]["count"] == 700
        assert 0 <= stats["latency_ms"]["p50"] <= stats["latency_ms"]["max"]

        sink.reset()
        after = sink.stats()
        assert (after["calls"], after["records"], after["latency_ms"]["count"]) == (0, 0, 0)
        assert after["unique_ids"] == 700


def test_the_go_sink_reports_serving_on_the_grpc_health_service() -> None:
    require_go()
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with GoSink() as sink, grpc.insecure_channel(sink.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
