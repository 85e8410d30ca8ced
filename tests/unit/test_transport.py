"""The grpcio transport against a real client-streaming server on loopback.

A call of one message goes out as a unary call on a synchronous channel and several messages as
a grpc.aio stream: the server, which only knows the method as client streaming, must not be able
to tell the difference, and statuses and shutdown must behave the same on both paths.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from concurrent.futures import CancelledError

import grpc
import pytest

from tagging_sidecar.config import GrpcSettings
from tagging_sidecar.contract.tagging.v1.tagging_pb2 import (
    StreamMetricResponse,
    Tagging,
    TaggingBatch,
)
from tagging_sidecar.forward.havilah import BATCH_METHOD, SINGLE_METHOD
from tagging_sidecar.forward.transport import AioTransport

from ..support.harness import eventually


class StreamingServer:
    """Implements both methods as client streaming, the way servers of the contract do."""

    def __init__(self) -> None:
        self.calls: list[list[bytes]] = []
        self.abort_with: grpc.StatusCode | None = None
        self.hang = threading.Event()
        self.release = threading.Event()
        handlers = {
            name: grpc.stream_unary_rpc_method_handler(
                self._handle,
                request_deserializer=lambda data: data,
                response_serializer=StreamMetricResponse.SerializeToString,
            )
            for name in ("StreamMetric", "StreamMetricBatch")
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("tagging.v1.Havilah", handlers),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _handle(
        self, requests: Iterator[bytes], context: grpc.ServicerContext
    ) -> StreamMetricResponse:
        messages = list(requests)  # to the end of the client's stream, as such servers do
        self.calls.append(messages)
        if self.hang.is_set():
            self.release.wait(30)
        if self.abort_with is not None:
            context.abort(self.abort_with, "refused by the test server")
        return StreamMetricResponse(received=len(messages))

    def stop(self) -> None:
        self.release.set()
        self.server.stop(None)


@pytest.fixture
def server() -> Iterator[StreamingServer]:
    running = StreamingServer()
    yield running
    running.stop()


@pytest.fixture
def transport(server: StreamingServer) -> Iterator[AioTransport]:
    opened = AioTransport(
        GrpcSettings(target=f"127.0.0.1:{server.port}"), (BATCH_METHOD, SINGLE_METHOD)
    )
    assert opened.wait_ready(10)
    yield opened
    opened.close()


def _tagging(index: int) -> bytes:
    return Tagging(id=f"t-{index}", subject="s", metric="m").SerializeToString()


@pytest.mark.parametrize("count", [1, 3])
def test_a_client_streaming_server_gets_every_message_of_a_call_in_one_call(
    server: StreamingServer, transport: AioTransport, count: int
) -> None:
    messages = [_tagging(i) for i in range(count)]
    response = transport.stream(SINGLE_METHOD, messages, timeout=10)
    assert response.received == count
    assert server.calls == [messages]


def test_a_batch_of_one_message_arrives_as_the_servers_batch_type(
    server: StreamingServer, transport: AioTransport
) -> None:
    batch = TaggingBatch(records=[Tagging(id="a"), Tagging(id="b")])
    response = transport.stream(BATCH_METHOD, [batch.SerializeToString()], timeout=10)
    assert response.received == 1
    assert [TaggingBatch.FromString(m) for m in server.calls[0]] == [batch]


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize(
    "status", [grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.INVALID_ARGUMENT]
)
def test_the_servers_status_comes_back_as_an_rpc_error_on_both_paths(
    server: StreamingServer, transport: AioTransport, count: int, status: grpc.StatusCode
) -> None:
    server.abort_with = status
    with pytest.raises(grpc.RpcError) as raised:
        transport.stream(BATCH_METHOD, [_tagging(i) for i in range(count)], timeout=10)
    assert raised.value.code() is status
    assert "refused by the test server" in (raised.value.details() or "")


@pytest.mark.parametrize(
    ("count", "ended_by"),
    [(1, "CANCELLED"), (3, "CancelledError")],  # the loop cancels its calls' coroutines
)
def test_closing_the_transport_cancels_a_call_the_server_holds(
    server: StreamingServer, count: int, ended_by: str
) -> None:
    transport = AioTransport(
        GrpcSettings(target=f"127.0.0.1:{server.port}"), (BATCH_METHOD, SINGLE_METHOD)
    )
    server.hang.set()
    errors: list[str] = []

    def call() -> None:
        try:
            transport.stream(BATCH_METHOD, [_tagging(i) for i in range(count)], timeout=60)
        except grpc.RpcError as exc:
            errors.append(exc.code().name)
        except CancelledError as exc:
            errors.append(type(exc).__name__)

    caller = threading.Thread(target=call)
    caller.start()
    eventually(lambda: len(server.calls) == 1, timeout=10)
    transport.close()
    caller.join(30)
    # Ended by the close, not by the 60 s deadline nor by the server's answer: the client
    # counts neither as the server's verdict, so the records are sent again.
    assert not caller.is_alive()
    assert errors == [ended_by]
