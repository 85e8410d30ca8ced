"""One grpc.aio channel on one event-loop thread, callable from any thread.

Why not the synchronous stub: a synchronous client-streaming call starts a thread per call to
drain its request iterator, and with tens of workers the GIL hand-offs between those threads
cost more than the calls themselves (measured: 32 workers forwarded 2.5x fewer records per second
than 4 workers). Here every call runs as a coroutine on a single loop; a worker thread only
waits on a future, so the number of workers no longer costs CPU.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import grpc
from grpc import aio

from tagging_sidecar.config import GrpcSettings
from tagging_sidecar.contract.tagging.v1.tagging_pb2 import StreamMetricResponse
from tagging_sidecar.forward.loop import LoopThread

T = TypeVar("T")


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


class AioTransport:
    """Owns the event loop thread and the channel; ``close()`` stops both."""

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
        self._calls = {
            method: self._channel.stream_unary(
                method,
                request_serializer=_identity,
                response_deserializer=StreamMetricResponse.FromString,
            )
            for method in methods
        }
        if on_state is not None:
            asyncio.run_coroutine_threadsafe(self._watch_state(), self._loop)

    async def _open(self) -> aio.Channel:
        options = channel_options(self._settings)
        credentials = channel_credentials(self._settings)
        if credentials is None:
            return aio.insecure_channel(self._settings.target, options=options)
        return aio.secure_channel(self._settings.target, credentials, options=options)

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
        """One client-streaming call of ``method``; raises ``grpc.RpcError`` on failure."""
        # The deadline is enforced by gRPC; the extra second only guards against a lost loop.
        return self.run(self._stream(method, messages, timeout), timeout + 1.0)

    def wait_ready(self, timeout: float) -> bool:
        """Whether the channel became ready within ``timeout`` seconds."""

        async def ready() -> bool:
            try:
                await asyncio.wait_for(self._channel.channel_ready(), timeout)
            except TimeoutError:
                return False
            return True

        return self.run(ready(), timeout + 1.0)

    def close(self) -> None:
        """Close the channel and stop the loop thread."""
        try:
            self.run(self._channel.close(grace=None), timeout=5)
        finally:
            self._runner.stop()
