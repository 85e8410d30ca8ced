"""What one ``StreamMetric`` call of many records costs the client, path by path.

One client process sends calls of ``--records`` (1,000) ``Tagging`` messages of about 110 bytes
each (made by ``tagging_sidecar.produce.make_record``) to the Go sink (bench/gosink) over loopback,
for ``--seconds`` per path, and reports the client's CPU time per record (every thread of this
process, gRPC's own included) and the records per second, next to one ``StreamMetricBatch`` call
of the same records for comparison. Each path runs from one thread, one call at a time.

Paths:

* ``aio``: grpc.aio with a request iterator, on its own loop thread (``AioTransport``);
* ``aio-agen``: the same with an async generator instead of the iterator;
* ``sync``: the synchronous grpcio stub with a request iterator;
* ``grpclib``: the pure-Python grpclib, one ``send_message`` per record;
* ``h2``: the sidecar's HTTP/2 transport (``H2Transport``): every message of the call framed
  with its 5-byte gRPC prefix and handed to HTTP/2 as one DATA write;
* ``client-grpcio``, ``client-h2``: the sidecar's whole client (``HavilahClient.deliver``) in
  single mode with ``single_transport`` set to ``grpcio`` (the aio path) or ``h2``;
* ``batch``: grpc.aio ``StreamMetricBatch``, the records in one ``TaggingBatch`` message.

Run ``python bench/single_mode.py`` (needs the ``go`` executable); ``-h`` for options.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

T = TypeVar("T")
Sender = Callable[[list[bytes]], int]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _LoopThread:
    """An event loop on its own thread, like the sidecar's transports."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def _identity(payload: bytes) -> bytes:
    return payload


def aio_sender(target: str, agen: bool = False) -> tuple[Sender, Callable[[], None]]:
    """grpc.aio StreamMetric, as the sidecar's AioTransport makes it."""
    from grpc import aio

    from tagging_sidecar.contract.tagging.v1.tagging_pb2 import StreamMetricResponse
    from tagging_sidecar.forward.havilah import SINGLE_METHOD

    runner = _LoopThread()

    async def open_channel() -> aio.Channel:
        return aio.insecure_channel(target)

    channel = runner.run(open_channel())
    call = channel.stream_unary(
        SINGLE_METHOD,
        request_serializer=_identity,
        response_deserializer=StreamMetricResponse.FromString,
    )

    async def generate(messages: list[bytes]) -> AsyncIterator[bytes]:
        for message in messages:
            yield message

    async def send(messages: list[bytes]) -> int:
        requests = generate(messages) if agen else iter(messages)
        response: StreamMetricResponse = await call(requests, timeout=30)
        return response.received

    def close() -> None:
        runner.run(channel.close())
        runner.close()

    return (lambda messages: runner.run(send(messages))), close


def batch_sender(target: str) -> tuple[Sender, Callable[[], None]]:
    """grpc.aio StreamMetricBatch: the same records in TaggingBatch messages."""
    from grpc import aio

    from tagging_sidecar.contract.tagging.v1.tagging_pb2 import StreamMetricResponse
    from tagging_sidecar.forward.havilah import BATCH_METHOD
    from tagging_sidecar.forward.wire import batch_messages

    runner = _LoopThread()

    async def open_channel() -> aio.Channel:
        return aio.insecure_channel(target)

    channel = runner.run(open_channel())
    call = channel.stream_unary(
        BATCH_METHOD,
        request_serializer=_identity,
        response_deserializer=StreamMetricResponse.FromString,
    )

    async def send(messages: list[bytes]) -> int:
        batches = list(batch_messages(messages, 4 * 1024 * 1024 - 64))
        response: StreamMetricResponse = await call(iter(batches), timeout=30)
        return response.received

    def close() -> None:
        runner.run(channel.close())
        runner.close()

    return (lambda messages: runner.run(send(messages))), close


def sync_sender(target: str) -> tuple[Sender, Callable[[], None]]:
    """The synchronous grpcio stub with a request iterator."""
    import grpc

    from tagging_sidecar.contract.tagging.v1.tagging_pb2 import StreamMetricResponse
    from tagging_sidecar.forward.havilah import SINGLE_METHOD

    channel = grpc.insecure_channel(target)
    call = channel.stream_unary(
        SINGLE_METHOD,
        request_serializer=_identity,
        response_deserializer=StreamMetricResponse.FromString,
    )

    def send(messages: list[bytes]) -> int:
        response: StreamMetricResponse = call(iter(messages), timeout=30)
        return response.received

    return send, channel.close


def grpclib_sender(target: str) -> tuple[Sender, Callable[[], None]]:
    """grpclib (pure Python on asyncio and h2), one send_message per record."""
    from grpclib.client import Channel
    from grpclib.const import Cardinality
    from grpclib.encoding.base import CodecBase

    from tagging_sidecar.contract.tagging.v1.tagging_pb2 import StreamMetricResponse
    from tagging_sidecar.forward.havilah import SINGLE_METHOD

    class RawCodec(CodecBase):
        __content_subtype__ = "proto"

        def encode(self, message: Any, message_type: Any) -> bytes:
            return bytes(message)

        def decode(self, data: bytes, message_type: Any) -> Any:
            return message_type.FromString(data)

    host, port = target.rsplit(":", 1)
    runner = _LoopThread()

    async def open_channel() -> Channel:
        return Channel(host, int(port), codec=RawCodec())

    channel = runner.run(open_channel())

    async def send(messages: list[bytes]) -> int:
        async with channel.request(
            SINGLE_METHOD, Cardinality.STREAM_UNARY, bytes, StreamMetricResponse, timeout=30
        ) as stream:
            for message in messages:
                await stream.send_message(message)
            await stream.end()
            response = await stream.recv_message()
        assert response is not None
        return int(response.received)

    async def close_channel() -> None:
        channel.close()

    def close() -> None:
        runner.run(close_channel())
        runner.close()

    return (lambda messages: runner.run(send(messages))), close


def h2_sender(target: str) -> tuple[Sender, Callable[[], None]]:
    """The sidecar's own HTTP/2 transport for client-streaming calls."""
    from tagging_sidecar.config import GrpcSettings
    from tagging_sidecar.forward.h2transport import H2Transport
    from tagging_sidecar.forward.havilah import SINGLE_METHOD

    transport = H2Transport(GrpcSettings(target=target))

    def send(messages: list[bytes]) -> int:
        return int(transport.stream(SINGLE_METHOD, messages, 30).received)

    return send, transport.close


def client_sender(target: str, single_transport: str) -> tuple[Sender, Callable[[], None]]:
    """The sidecar's whole forwarding client (``HavilahClient.deliver``) in single mode."""
    from tagging_sidecar.config import GrpcSettings
    from tagging_sidecar.forward import connect

    settings = GrpcSettings.model_validate(
        {"target": target, "mode": "single", "single_transport": single_transport}
    )
    client = connect(settings)

    def send(messages: list[bytes]) -> int:
        rejected = client.deliver(messages)
        return len(messages) - len(rejected)

    return send, client.close


PATHS: dict[str, Callable[[str], tuple[Sender, Callable[[], None]]]] = {
    "aio": aio_sender,
    "aio-agen": lambda target: aio_sender(target, agen=True),
    "sync": sync_sender,
    "grpclib": grpclib_sender,
    "h2": h2_sender,
    "client-grpcio": lambda target: client_sender(target, "grpcio"),
    "client-h2": lambda target: client_sender(target, "h2"),
    "batch": batch_sender,
}


def measure(name: str, target: str, messages: list[bytes], seconds: float) -> tuple[float, float]:
    """CPU microseconds per record and records per second of one path."""
    send, close = PATHS[name](target)
    try:
        send(messages)  # connect and warm up outside the measurement
        records = 0
        cpu, wall = _cpu(), time.perf_counter()
        deadline = wall + seconds
        while time.perf_counter() < deadline:
            received = send(messages)
            if received != len(messages):
                raise RuntimeError(f"{name}: the sink acknowledged {received} of {len(messages)}")
            records += received
        cpu, wall = _cpu() - cpu, time.perf_counter() - wall
    finally:
        close()
    return cpu / records * 1e6, records / wall


def main() -> None:
    """Measure the chosen paths against one Go sink; print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1000, help="messages per call")
    parser.add_argument("--seconds", type=float, default=5.0, help="time per path")
    parser.add_argument("paths", nargs="*", default=list(PATHS), help=f"of {', '.join(PATHS)}")
    args = parser.parse_args()

    from tagging_sidecar.produce import make_record
    from tests.support.gosink import GoSink

    messages = [make_record("bench0001", i).SerializeToString() for i in range(args.records)]
    size = sum(map(len, messages)) / len(messages)
    print(f"{args.records} messages per call, {size:.0f} bytes each, {args.seconds:g} s per path")
    print()
    print("| path | client CPU µs/record | records/s |")
    print("| --- | ---: | ---: |")
    with GoSink() as sink:
        for name in args.paths:
            cpu_us, rate = measure(name, sink.target, messages, args.seconds)
            print(f"| {name} | {cpu_us:.1f} | {rate:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
