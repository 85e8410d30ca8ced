"""The HTTP/2 transport of StreamMetric calls against grpcio servers and a scripted HTTP/2 server.

Every status path, the deadline, a stream aborted halfway, TLS and mutual TLS, calls larger than
the flow-control windows, many threads on one connection, RST_STREAM, GOAWAY and lost connections.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import h2.errors
import pytest

from tagging_sidecar.config import GrpcSettings, InputFormat
from tagging_sidecar.contract.tagging.v1 import tagging_pb2
from tagging_sidecar.forward import HavilahClient, connect
from tagging_sidecar.forward.h2transport import (
    H2CallError,
    H2Transport,
    SplitTransport,
    frame_messages,
    parse_target,
)
from tagging_sidecar.forward.havilah import SINGLE_METHOD
from tagging_sidecar.produce import encode, make_record
from tagging_sidecar.sink import SinkServer
from tagging_sidecar.sink.server import Faults, ServerTls

from ..support.certs import make_ca
from ..support.h2server import Request, ScriptedServer, _Protocol, ok
from ..support.harness import free_port
from ..support.servers import (
    AbortHalfwayServer,
    HangingServer,
    HavilahServer,
    IdempotentServer,
    ShortCountServer,
)


def _payloads(count: int, pad: int = 0, run: str | None = None) -> list[bytes]:
    run = run or uuid.uuid4().hex[:8]
    return [encode(make_record(run, i, pad), InputFormat.PROTOBUF) for i in range(count)]


def _ids(payloads: list[bytes]) -> list[str]:
    return [tagging_pb2.Tagging.FromString(p).id for p in payloads]


def _settings(target: str, **extra: object) -> GrpcSettings:
    values: dict[str, object] = {
        "target": target,
        "mode": "single",
        "retry_initial_backoff": 0.01,
        "retry_max_backoff": 0.05,
    }
    values.update(extra)
    return GrpcSettings.model_validate(values)


@pytest.fixture
def transports() -> Iterator[list[H2Transport]]:
    """Transports made by a test, closed after it."""
    made: list[H2Transport] = []
    yield made
    for transport in made:
        transport.close()


def _transport(made: list[H2Transport], target: str, **extra: object) -> H2Transport:
    transport = H2Transport(_settings(target, **extra))
    made.append(transport)
    return transport


# pure parts


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("127.0.0.1:50051", ("127.0.0.1", 50051)),
        ("havilah:443", ("havilah", 443)),
        ("[::1]:7000", ("::1", 7000)),
        ("dns:///havilah.svc:50051", ("havilah.svc", 50051)),
        ("dns:havilah:50051", ("havilah", 50051)),
    ],
)
def test_targets_of_host_and_port_are_understood(target: str, expected: tuple[str, int]) -> None:
    assert parse_target(target) == expected


@pytest.mark.parametrize("target", ["unix:/tmp/socket", "ipv4:10.0.0.1:1,10.0.0.2:1", "havilah"])
def test_other_targets_are_left_to_grpcio(target: str) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        parse_target(target)


def test_messages_are_framed_with_the_grpc_prefix() -> None:
    assert frame_messages([b"ab", b""], 1024) == b"\x00\x00\x00\x00\x02ab\x00\x00\x00\x00\x00"


def test_a_message_over_the_size_limit_fails_before_anything_is_sent() -> None:
    settings = _settings("127.0.0.1:1", max_message_bytes=1024)
    with (
        ScriptedServer() as server,
        H2Transport(settings.model_copy(update={"target": server.target})) as transport,
    ):
        with pytest.raises(H2CallError) as caught:
            transport.stream(SINGLE_METHOD, [b"x" * 2048], 5)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert server.requests == []


# against grpcio servers


def test_every_record_arrives_in_order_and_the_count_comes_back(
    transports: list[H2Transport],
) -> None:
    payloads = _payloads(500)
    with HavilahServer() as server:
        response = _transport(transports, server.target).stream(SINGLE_METHOD, payloads, 10)
        assert response.received == 500
        assert server.stored_ids() == _ids(payloads)


def test_a_call_far_larger_than_the_flow_control_windows_is_delivered(
    transports: list[H2Transport],
) -> None:
    # About 12 MB: hundreds of times the 64 KiB initial windows, so the call has to wait for
    # WINDOW_UPDATE frames many times.
    payloads = _payloads(3000, pad=4000)
    with HavilahServer() as server:
        response = _transport(transports, server.target).stream(SINGLE_METHOD, payloads, 60)
        assert response.received == 3000
        assert server.stored_ids() == _ids(payloads)


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.DATA_LOSS,
    ],
)
def test_the_servers_status_and_message_come_back_as_an_rpc_error(
    transports: list[H2Transport], code: grpc.StatusCode
) -> None:
    sink = SinkServer(faults=Faults(fail_first=1, fail_code=code))
    sink.start()
    try:
        transport = _transport(transports, f"127.0.0.1:{sink.port}")
        with pytest.raises(grpc.RpcError) as caught:
            transport.stream(SINGLE_METHOD, _payloads(10), 10)
        assert isinstance(caught.value, H2CallError)
        assert caught.value.code() is code
        assert caught.value.details() == "sink fault: failing on purpose"
        # The failed call left the connection usable.
        assert transport.stream(SINGLE_METHOD, _payloads(3), 10).received == 3
    finally:
        sink.stop(0)


class _MessageServer(HavilahServer):
    """Rejects every stream with a message that needs percent-encoding on the wire."""

    MESSAGE = "record 7 is 100% wrong: «valeur» ≠ 3\nsee logs"

    def handle(
        self, records: object, context: grpc.ServicerContext
    ) -> tagging_pb2.StreamMetricResponse:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, self.MESSAGE)
        raise AssertionError("unreachable: abort raises")


def test_the_status_message_is_percent_decoded(transports: list[H2Transport]) -> None:
    with _MessageServer() as server:
        with pytest.raises(H2CallError) as caught:
            _transport(transports, server.target).stream(SINGLE_METHOD, _payloads(2), 10)
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert caught.value.details() == _MessageServer.MESSAGE


def test_a_server_without_the_method_answers_unimplemented(
    transports: list[H2Transport],
) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with pytest.raises(H2CallError) as caught:
            _transport(transports, f"127.0.0.1:{port}").stream(SINGLE_METHOD, _payloads(2), 10)
        assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(0)


def test_a_hanging_server_ends_in_deadline_exceeded_and_the_connection_stays_usable(
    transports: list[H2Transport],
) -> None:
    with HangingServer() as server:
        transport = _transport(transports, server.target)
        with pytest.raises(H2CallError) as caught:
            transport.stream(SINGLE_METHOD, _payloads(5), 0.5)
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        server.hanging.clear()
        payloads = _payloads(5)
        assert transport.stream(SINGLE_METHOD, payloads, 10).received == 5
        assert server.stored_ids() == _ids(payloads)


def test_a_stream_aborted_halfway_is_sent_again_whole_by_the_client() -> None:
    payloads = _payloads(40)
    with AbortHalfwayServer(failures=2) as server:
        client = connect(_settings(server.target))
        try:
            assert client.deliver(payloads) == []
        finally:
            client.close()
        assert server.aborted == 2
        assert set(server.stored_ids()) == set(_ids(payloads))


def test_already_exists_in_the_middle_of_a_stream_is_isolated_and_nothing_is_lost() -> None:
    payloads = _payloads(20)
    ids = _ids(payloads)
    with IdempotentServer(batch_rpc=False) as server:
        server.held.add(ids[7])
        client = connect(_settings(server.target))
        try:
            assert client.deliver(payloads) == []
        finally:
            client.close()
        assert set(server.stored_ids()) | {ids[7]} == set(ids)
        assert server.already_exists >= 1


def test_a_short_count_is_retried_until_the_server_counts_every_record() -> None:
    payloads = _payloads(10)
    with ShortCountServer(times=2) as server:
        client = connect(_settings(server.target))
        try:
            assert client.deliver(payloads) == []
        finally:
            client.close()
        assert server.short_answers == 2
        assert set(server.stored_ids()) == set(_ids(payloads))


def test_many_threads_share_one_connection_within_the_servers_stream_limit(
    transports: list[H2Transport],
) -> None:
    class LimitedServer(HavilahServer):
        def __init__(self) -> None:
            super().__init__()
            self._server = grpc.server(
                futures.ThreadPoolExecutor(max_workers=16),
                options=[("grpc.max_concurrent_streams", 2)],
            )
            from tagging_sidecar.contract.tagging.v1 import tagging_pb2_grpc

            tagging_pb2_grpc.add_HavilahServicer_to_server(self, self._server)
            self.port = self._server.add_insecure_port("127.0.0.1:0")

    batches = [_payloads(200) for _ in range(48)]
    with LimitedServer() as server:
        transport = _transport(transports, server.target)
        with futures.ThreadPoolExecutor(max_workers=16) as pool:
            counts = list(pool.map(lambda b: transport.stream(SINGLE_METHOD, b, 30), batches))
        assert [c.received for c in counts] == [200] * 48
        stored = server.stored_ids()
        assert sorted(stored) == sorted(i for b in batches for i in _ids(b))


def test_an_unreachable_server_is_unavailable_and_the_next_call_reconnects(
    transports: list[H2Transport],
) -> None:
    port = free_port()
    transport = _transport(transports, f"127.0.0.1:{port}")
    with pytest.raises(H2CallError) as caught:
        transport.stream(SINGLE_METHOD, _payloads(2), 5)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    sink = SinkServer(listen=f"127.0.0.1:{port}")
    sink.start()
    try:
        assert transport.stream(SINGLE_METHOD, _payloads(2), 5).received == 2
        sink.stop(0)
        # The server went away: the next call fails fast instead of hanging, then reconnects.
        with pytest.raises(H2CallError) as after_stop:
            transport.stream(SINGLE_METHOD, _payloads(2), 5)
        assert after_stop.value.code() is grpc.StatusCode.UNAVAILABLE
        sink = SinkServer(listen=f"127.0.0.1:{port}")
        sink.start()
        assert transport.stream(SINGLE_METHOD, _payloads(2), 5).received == 2
    finally:
        sink.stop(0)


def test_local_failures_are_retried_and_never_count_as_the_servers_rejection() -> None:
    # A server that comes up only after the first attempts: UNAVAILABLE is retried, and the
    # deadline of a hanging call does not count against max_attempts.
    with HangingServer() as server:
        settings = _settings(server.target, timeout=0.3, max_attempts=1)
        client = connect(settings)
        try:
            outcome: list[object] = []
            worker = threading.Thread(target=lambda: outcome.append(client.deliver(_payloads(3))))
            worker.start()
            while server.hung_calls < 2 and worker.is_alive():
                worker.join(0.05)
            server.hanging.clear()
            worker.join(30)
            assert outcome == [[]]
        finally:
            client.close()


# TLS


def _tls_sink(tmp_path: Path, mutual: bool) -> tuple[SinkServer, Path, Path, Path]:
    ca = make_ca(tmp_path / "pki", "ca")
    server_cert = ca.issue("server", server_names=["127.0.0.1"])
    client_cert = ca.issue("client", client=True)
    tls = ServerTls(server_cert.cert_file, server_cert.key_file, ca.cert_file if mutual else None)
    sink = SinkServer(tls=tls)
    sink.start()
    return sink, ca.cert_file, client_cert.cert_file, client_cert.key_file


def test_tls_verifies_the_server_and_delivers(
    tmp_path: Path, transports: list[H2Transport]
) -> None:
    sink, ca_file, _, _ = _tls_sink(tmp_path, mutual=False)
    try:
        transport = _transport(transports, f"127.0.0.1:{sink.port}", tls=True, ca_file=ca_file)
        assert transport.stream(SINGLE_METHOD, _payloads(50), 10).received == 50
        assert sink.counters.records == 50
    finally:
        sink.stop(0)


def test_tls_refuses_a_server_signed_by_another_ca(
    tmp_path: Path, transports: list[H2Transport]
) -> None:
    sink, _, _, _ = _tls_sink(tmp_path, mutual=False)
    other = make_ca(tmp_path / "other", "other")
    try:
        transport = _transport(
            transports, f"127.0.0.1:{sink.port}", tls=True, ca_file=other.cert_file
        )
        with pytest.raises(H2CallError) as caught:
            transport.stream(SINGLE_METHOD, _payloads(2), 10)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert sink.counters.records == 0
    finally:
        sink.stop(0)


def test_mutual_tls_delivers_with_a_client_certificate_and_fails_without(
    tmp_path: Path, transports: list[H2Transport]
) -> None:
    sink, ca_file, cert_file, key_file = _tls_sink(tmp_path, mutual=True)
    target = f"127.0.0.1:{sink.port}"
    try:
        with_cert = _transport(
            transports, target, tls=True, ca_file=ca_file, cert_file=cert_file, key_file=key_file
        )
        assert with_cert.stream(SINGLE_METHOD, _payloads(20), 10).received == 20
        without = _transport(transports, target, tls=True, ca_file=ca_file)
        with pytest.raises(H2CallError) as caught:
            without.stream(SINGLE_METHOD, _payloads(2), 10)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert sink.counters.records == 20
    finally:
        sink.stop(0)


# against the scripted HTTP/2 server


def test_the_request_carries_the_grpc_headers(transports: list[H2Transport]) -> None:
    with ScriptedServer() as server:
        transport = _transport(transports, server.target)
        assert transport.stream(SINGLE_METHOD, _payloads(3), 7).received == 3
        headers = server.requests[0].headers
    assert headers[":method"] == "POST"
    assert headers[":path"] == SINGLE_METHOD
    assert headers[":scheme"] == "http"
    assert headers[":authority"] == server.target
    assert headers["te"] == "trailers"
    assert headers["content-type"] == "application/grpc"
    assert headers["user-agent"].startswith("tagging-sidecar/")
    assert headers["grpc-timeout"] == "7000m"


def _reset(code: h2.errors.ErrorCodes) -> object:
    def behaviour(_: ScriptedServer, proto: _Protocol, stream_id: int, __: Request) -> None:
        proto.conn.reset_stream(stream_id, code)

    return behaviour


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (h2.errors.ErrorCodes.REFUSED_STREAM, grpc.StatusCode.UNAVAILABLE),
        (h2.errors.ErrorCodes.CANCEL, grpc.StatusCode.CANCELLED),
        (h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (h2.errors.ErrorCodes.INTERNAL_ERROR, grpc.StatusCode.INTERNAL),
    ],
)
def test_rst_stream_maps_to_the_grpc_status(
    transports: list[H2Transport], error: h2.errors.ErrorCodes, code: grpc.StatusCode
) -> None:
    with ScriptedServer(_reset(error)) as server:  # type: ignore[arg-type]
        transport = _transport(transports, server.target)
        with pytest.raises(H2CallError) as caught:
            transport.stream(SINGLE_METHOD, _payloads(2), 5)
        assert caught.value.code() is code


def test_a_stream_refused_before_processing_is_sent_again(transports: list[H2Transport]) -> None:
    """REFUSED_STREAM means the server processed nothing (e.g. a stream over its limit): the
    call goes out again on a new stream and succeeds; every other reset ends it."""
    refused: list[int] = []

    def refuse_once(server: ScriptedServer, proto: _Protocol, stream_id: int, r: Request) -> None:
        if not refused:
            refused.append(stream_id)
            proto.conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        ok(server, proto, stream_id, r)

    with ScriptedServer(refuse_once) as server:
        transport = _transport(transports, server.target)
        response = transport.stream(SINGLE_METHOD, _payloads(2), 5)
    assert response.received == 2
    assert len(refused) == 1


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("503", grpc.StatusCode.UNAVAILABLE),
        ("404", grpc.StatusCode.UNIMPLEMENTED),
        ("401", grpc.StatusCode.UNAUTHENTICATED),
        ("500", grpc.StatusCode.UNKNOWN),
    ],
)
def test_an_http_error_without_a_grpc_status_maps_to_the_grpc_status(
    transports: list[H2Transport], status: str, code: grpc.StatusCode
) -> None:
    def behaviour(_: ScriptedServer, proto: _Protocol, stream_id: int, __: Request) -> None:
        proto.conn.send_headers(stream_id, [(":status", status)], end_stream=True)

    with ScriptedServer(behaviour) as server:
        with pytest.raises(H2CallError) as caught:
            _transport(transports, server.target).stream(SINGLE_METHOD, _payloads(2), 5)
        assert caught.value.code() is code


def test_a_trailers_only_response_carries_the_status_in_its_headers(
    transports: list[H2Transport],
) -> None:
    def behaviour(_: ScriptedServer, proto: _Protocol, stream_id: int, __: Request) -> None:
        proto.conn.send_headers(
            stream_id,
            [
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("grpc-status", "9"),
                ("grpc-message", "quota%20of%20%22eu%22%20used%3A%20100%25"),
            ],
            end_stream=True,
        )

    with ScriptedServer(behaviour) as server:
        with pytest.raises(H2CallError) as caught:
            _transport(transports, server.target).stream(SINGLE_METHOD, _payloads(2), 5)
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert caught.value.details() == 'quota of "eu" used: 100%'


def test_goaway_fails_unprocessed_calls_as_unavailable_and_the_next_call_reconnects(
    transports: list[H2Transport],
) -> None:
    answered: list[int] = []

    def behaviour(server: ScriptedServer, proto: _Protocol, stream_id: int, req: Request) -> None:
        if server.connections == 1:
            # Processed nothing: GOAWAY with last stream 0, then keep the socket open.
            proto.conn.close_connection(last_stream_id=0)
        else:
            answered.append(stream_id)
            ok(server, proto, stream_id, req)

    with ScriptedServer(behaviour) as server:
        transport = _transport(transports, server.target)
        with pytest.raises(H2CallError) as caught:
            transport.stream(SINGLE_METHOD, _payloads(2), 5)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "GOAWAY" in caught.value.details()
        assert transport.stream(SINGLE_METHOD, _payloads(2), 5).received == 2
        assert server.connections == 2
        assert answered == [1]


def test_calls_in_flight_finish_when_the_server_rotates_its_connection(
    transports: list[H2Transport],
) -> None:
    # A grpc server with a maximum connection age sends a graceful GOAWAY every 200 ms and lets
    # the calls it took finish: none of them may fail for it.
    class AgedServer(HavilahServer):
        def __init__(self) -> None:
            super().__init__()
            self._server = grpc.server(
                futures.ThreadPoolExecutor(max_workers=8),
                options=[
                    ("grpc.max_connection_age_ms", 200),
                    ("grpc.max_connection_age_grace_ms", 10_000),
                ],
            )
            from tagging_sidecar.contract.tagging.v1 import tagging_pb2_grpc

            tagging_pb2_grpc.add_HavilahServicer_to_server(self, self._server)
            self.port = self._server.add_insecure_port("127.0.0.1:0")

    payloads = _payloads(2000)
    with AgedServer() as server:
        transport = _transport(transports, server.target)
        calls = 0
        while transport.connections_opened < 3 and calls < 500:
            assert transport.stream(SINGLE_METHOD, payloads, 10).received == 2000
            calls += 1
        assert transport.connections_opened >= 3


def test_a_connection_dropped_mid_call_is_unavailable_never_a_hang(
    transports: list[H2Transport],
) -> None:
    def behaviour(_: ScriptedServer, proto: _Protocol, __: int, ___: Request) -> None:
        assert proto.transport is not None
        proto.transport.close()

    with ScriptedServer(behaviour) as server:
        transport = _transport(transports, server.target)
        with pytest.raises(H2CallError) as caught:
            transport.stream(SINGLE_METHOD, _payloads(2), 30)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


def test_a_silent_connection_is_replaced_after_a_call_runs_out_of_time(
    transports: list[H2Transport],
) -> None:
    def behaviour(server: ScriptedServer, proto: _Protocol, stream_id: int, req: Request) -> None:
        if server.connections == 1:
            proto.frozen = True  # like a partitioned peer: no answer, no PING ack, no FIN
        else:
            ok(server, proto, stream_id, req)

    with ScriptedServer(behaviour) as server:
        transport = H2Transport(_settings(server.target), probe_seconds=0.2)
        transports.append(transport)
        with pytest.raises(H2CallError) as caught:
            transport.stream(SINGLE_METHOD, _payloads(2), 0.3)
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        # Calls fail (UNAVAILABLE once the unanswered PING condemns the connection, or their
        # own deadline before that) until one goes over a new connection.
        answered = None
        failures: list[grpc.StatusCode] = []
        for _ in range(50):
            try:
                answered = transport.stream(SINGLE_METHOD, _payloads(2), 0.3)
                break
            except H2CallError as exc:
                failures.append(exc.code())
        assert set(failures) <= {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE}
        assert answered is not None and answered.received == 2
        assert server.connections == 2


def test_the_connection_has_tcp_keepalive_on(transports: list[H2Transport]) -> None:
    import socket

    with ScriptedServer() as server:
        transport = _transport(transports, server.target)
        assert transport.stream(SINGLE_METHOD, _payloads(1), 5).received == 1
        connection = transport._connection
        assert connection is not None and connection.transport is not None
        sock = connection.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1


def test_a_closed_transport_refuses_calls_as_cancelled() -> None:
    with ScriptedServer() as server:
        transport = H2Transport(_settings(server.target))
        transport.close()
        with pytest.raises(H2CallError) as caught:
            transport.stream(SINGLE_METHOD, _payloads(1), 5)
        assert caught.value.code() is grpc.StatusCode.CANCELLED


# wiring


def test_connect_sends_streammetric_over_http2_and_keeps_grpcio_for_the_rest() -> None:
    with HavilahServer() as server:
        client = connect(_settings(server.target))
        try:
            assert isinstance(client._transport, SplitTransport)
            client.wait_ready(10)
            payloads = _payloads(30)
            assert client.deliver(payloads) == []
            assert server.stored_ids() == _ids(payloads)
        finally:
            client.close()


def test_the_grpcio_path_stays_available_by_setting() -> None:
    with HavilahServer() as server:
        client = connect(_settings(server.target, single_transport="grpcio"))
        try:
            assert not isinstance(client._transport, SplitTransport)
            assert client.deliver(_payloads(5)) == []
            assert len(server.stored_ids()) == 5
        finally:
            client.close()


def test_a_client_over_http2_reports_the_servers_rejection_per_record() -> None:
    sink = SinkServer(faults=Faults(reject_ids=set()))
    payloads = _payloads(8)
    sink.faults.reject_ids = {_ids(payloads)[5]}
    sink.start()
    try:
        client: HavilahClient = connect(_settings(f"127.0.0.1:{sink.port}"))
        try:
            rejected = client.deliver(payloads)
        finally:
            client.close()
        assert [index for index, _ in rejected] == [5]
        assert sink.counters.records == 7
    finally:
        sink.stop(0)
