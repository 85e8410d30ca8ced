"""The grpcio transport: calls of one message on a synchronous channel, the rest on grpc.aio.

Nearly every call the sidecar makes carries one message (a ``TaggingBatch`` holding the whole
batch). On the wire, a client-streaming call of one message is exactly a unary call: the
request headers, one length-prefixed message, the end of the stream; then one response message
and the status. So such calls are made as unary calls on a synchronous channel, in the
worker's own thread, which blocks in gRPC's core without the interpreter lock. Through the
event loop the same call cost three times the CPU (measured against the Go sink: about 900
against 300 microseconds a call) and two thread hand-offs, each waiting for the lock.

Calls of several messages (``StreamMetric`` when the HTTP/2 client is off, or a batch larger
than one message) keep the grpc.aio channel on its event-loop thread: a synchronous
client-streaming call starts a thread per call to drain its request iterator, which cost more
than the calls themselves with tens of workers. The loop also runs the health checks and the
connectivity watch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import grpc
from grpc import aio

from tagging_sidecar.config import GrpcSettings
from tagging_sidecar.contract.tagging.v1.tagging_pb2 import StreamMetricResponse
from tagging_sidecar.forward.loop import LoopThread

T = TypeVar("T")
C = TypeVar("C")


def _identity(payload: bytes) -> bytes:
    return payload


def channel_options(settings: GrpcSettings) -> list[tuple[str, Any]]:
    """Channel arguments: message limits, keepalive, and a quick reconnect."""
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", 4 * 1024 * 1024),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        # A downstream restart should be noticed within seconds, not after the default backoff.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 5_000),
    ]


def channel_credentials(settings: GrpcSettings) -> grpc.ChannelCredentials | None:
    """TLS (and mTLS when a client certificate is set) credentials, or None for plaintext."""
    if not settings.tls:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=settings.ca_file.read_bytes() if settings.ca_file else None,
        private_key=settings.key_file.read_bytes() if settings.key_file else None,
        certificate_chain=settings.cert_file.read_bytes() if settings.cert_file else None,
    )


def _dial(settings: GrpcSettings, insecure: Callable[..., C], secure: Callable[..., C]) -> C:
    """A channel to the target, made by grpc's or grpc.aio's factories (same arguments)."""
    options = channel_options(settings)
    credentials = channel_credentials(settings)
    if credentials is None:
        return insecure(settings.target, options=options)
    return secure(settings.target, credentials, options=options)


def _by_method(make: Callable[..., C], methods: tuple[str, ...]) -> dict[str, C]:
    """One multi-callable per method, sending bytes as they are and reading the response."""
    return {
        method: make(
            method,
            request_serializer=_identity,
            response_deserializer=StreamMetricResponse.FromString,
        )
        for method in methods
    }


class AioTransport:
    """Owns the event loop thread and both channels; ``close()`` stops them all."""

    def __init__(
        self,
        settings: GrpcSettings,
        methods: tuple[str, ...],
        on_state: Callable[[grpc.ChannelConnectivity], None] | None = None,
    ) -> None:
        self._settings = settings
        self._runner = LoopThread("grpc-loop")
        self._loop = self._runner.loop
        self._on_state = on_state
        self._channel: aio.Channel = self.run(self._open(), timeout=30)
        self._calls = _by_method(self._channel.stream_unary, methods)
        if on_state is not None:
            asyncio.run_coroutine_threadsafe(self._watch_state(), self._loop)
        self._direct: grpc.Channel = _dial(settings, grpc.insecure_channel, grpc.secure_channel)
        self._unary = _by_method(self._direct.unary_unary, methods)

    async def _open(self) -> aio.Channel:
        # On the loop's thread: a grpc.aio channel belongs to the loop it was made on.
        return _dial(self._settings, aio.insecure_channel, aio.secure_channel)

    async def _watch_state(self) -> None:
        assert self._on_state is not None
        state = self._channel.get_state(try_to_connect=True)
        while True:
            self._on_state(state)
            await self._channel.wait_for_state_change(state)
            state = self._channel.get_state(try_to_connect=True)

    def background(self, work: Callable[[aio.Channel], Coroutine[Any, Any, None]]) -> None:
        """Run ``work(channel)`` on the loop until :meth:`close` (e.g. periodic health checks)."""
        asyncio.run_coroutine_threadsafe(work(self._channel), self._loop)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the loop and wait for its result from this thread.

        On ``TimeoutError`` the coroutine is cancelled, so a call given up on cannot still
        deliver behind the caller's back.
        """
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    async def _stream(
        self, method: str, messages: list[bytes], timeout: float
    ) -> StreamMetricResponse:
        call = self._calls[method]
        response: StreamMetricResponse = await call(iter(messages), timeout=timeout)
        return response

    def stream(self, method: str, messages: list[bytes], timeout: float) -> StreamMetricResponse:
        """One client-streaming call of ``method``; raises ``grpc.RpcError`` on failure.

        A call of one message is made as a unary call from the caller's thread (the same bytes
        on the wire); see the module's docstring.
        """
        if len(messages) == 1:
            response: StreamMetricResponse = self._unary[method](messages[0], timeout=timeout)
            return response
        # The deadline is enforced by gRPC; the extra second only guards against a lost loop.
        return self.run(self._stream(method, messages, timeout), timeout + 1.0)

    def wait_ready(self, timeout: float) -> bool:
        """Whether both channels became ready within ``timeout`` seconds."""
        started = time.monotonic()
        if not self._wait_loop_channel(timeout):
            return False
        left = max(0.0, timeout - (time.monotonic() - started))
        try:
            grpc.channel_ready_future(self._direct).result(left)
        except grpc.FutureTimeoutError:
            return False
        return True

    def _wait_loop_channel(self, timeout: float) -> bool:

        async def ready() -> bool:
            try:
                await asyncio.wait_for(self._channel.channel_ready(), timeout)
            except TimeoutError:
                return False
            return True

        return self.run(ready(), timeout + 1.0)

    def close(self) -> None:
        """Close both channels (calls still in flight end as ``CANCELLED``) and stop the loop
        thread."""
        try:
            self._direct.close()
            self.run(self._channel.close(grace=None), timeout=5)
        finally:
            self._runner.stop()
