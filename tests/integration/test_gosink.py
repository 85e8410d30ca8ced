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


def test_the_http2_transport_delivers_large_and_concurrent_calls_to_the_go_sink() -> None:
    require_go()
    from concurrent import futures

    from tagging_sidecar.forward.h2transport import H2Transport
    from tagging_sidecar.forward.havilah import SINGLE_METHOD

    run = uuid.uuid4().hex[:8]
    # One call of ~12 MB (far beyond the flow-control windows), then 32 calls from 8 threads.
    big = [encode(make_record(run, i, 4000), InputFormat.PROTOBUF) for i in range(3000)]
    small = [_payloads(f"{run}c{n}", 250) for n in range(32)]
    with GoSink(per_record=0.00001) as sink:
        with H2Transport(GrpcSettings(target=sink.target)) as transport:
            assert transport.stream(SINGLE_METHOD, big, 60).received == 3000
            with futures.ThreadPoolExecutor(max_workers=8) as pool:
                answers = list(pool.map(lambda b: transport.stream(SINGLE_METHOD, b, 60), small))
        assert [a.received for a in answers] == [250] * 32
        stats = sink.stats()
        assert stats["single_calls"] == 33
        assert stats["records"] == stats["unique_ids"] == 3000 + 32 * 250


def test_the_http2_transport_gets_unimplemented_for_the_batch_method_of_a_single_only_sink() -> (
    None
):
    require_go()
    import grpc

    from tagging_sidecar.forward.h2transport import H2CallError, H2Transport
    from tagging_sidecar.forward.havilah import BATCH_METHOD

    with GoSink(single_only=True) as sink, H2Transport(GrpcSettings(target=sink.target)) as t:
        with pytest.raises(H2CallError) as caught:
            t.stream(BATCH_METHOD, [b""], 10)
        assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
        assert "not implemented" in caught.value.details()


def test_the_http2_transport_gets_the_go_sinks_statuses_and_its_own_deadline() -> None:
    require_go()
    import grpc

    from tagging_sidecar.forward.h2transport import H2CallError, H2Transport
    from tagging_sidecar.forward.havilah import SINGLE_METHOD

    run = uuid.uuid4().hex[:8]
    # 5 ms per record: a call of 2,000 records takes 10 s, far past a 0.3 s deadline (the sink
    # counts that call only once its time is spent, long after this test has looked).
    with GoSink(per_record=0.005) as sink, H2Transport(GrpcSettings(target=sink.target)) as t:
        with pytest.raises(H2CallError) as late:
            t.stream(SINGLE_METHOD, _payloads(run, 2000), 0.3)
        assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        # Bytes that are not a Tagging: the server's INVALID_ARGUMENT, with its message.
        with pytest.raises(H2CallError) as bad:
            t.stream(SINGLE_METHOD, [b"\x0a\xff"], 10)
        assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed" in bad.value.details()
        # The connection survived both.
        assert t.stream(SINGLE_METHOD, _payloads(run, 10), 10).received == 10
        assert t.connections_opened == 1
        assert sink.stats()["records"] == 10


@pytest.mark.parametrize(("interval", "connections"), [(0.0, 2), (60.0, 1)])
def test_pings_after_deadlines_stay_within_the_go_servers_keepalive_policy(
    interval: float, connections: int
) -> None:
    # grpc-go closes a connection (GOAWAY "too_many_pings") after a few PINGs closer together
    # than its policy allows while it sends nothing; the PING sent after a call ran out of time
    # is limited to one a minute so that a server that hangs calls keeps its connection. With
    # no limit (interval 0) the same calls cost the connection: that shows the limit matters.
    require_go()
    from tagging_sidecar.forward.h2transport import H2CallError, H2Transport
    from tagging_sidecar.forward.havilah import SINGLE_METHOD

    payloads = _payloads(uuid.uuid4().hex[:8], 200)
    with (
        GoSink(per_record=0.05) as sink,
        H2Transport(GrpcSettings(target=sink.target), probe_interval=interval) as transport,
    ):
        for _ in range(6):
            with pytest.raises(H2CallError):
                transport.stream(SINGLE_METHOD, payloads, 0.2)
        assert transport.connections_opened == connections


def test_the_go_sinks_own_tests_pass_and_its_sources_are_gofmt_clean() -> None:
    require_go()
    import shutil
    import subprocess

    from ..support.gosink import SOURCE

    go = shutil.which("go")
    assert go is not None
    tested = subprocess.run(
        [go, "test", "./..."], cwd=SOURCE, capture_output=True, text=True, timeout=300, check=False
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    gofmt = shutil.which("gofmt") or str(Path(go).with_name("gofmt"))
    unformatted = subprocess.run(
        [gofmt, "-l", "."], cwd=SOURCE, capture_output=True, text=True, timeout=60, check=True
    )
    assert unformatted.stdout == ""
