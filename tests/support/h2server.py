"""A scripted HTTP/2 server on 127.0.0.1 for transport tests: answers each stream as told.

It speaks just enough HTTP/2 (with the ``h2`` library) to play a gRPC server that does something
no well-behaved grpcio server can be made to do on demand: reset a stream, send GOAWAY, answer
with an HTTP error and no gRPC status, or drop the connection. It records each request's headers.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import h2.config
import h2.connection
import h2.errors
import h2.events

from tagging_sidecar.contract.tagging.v1.tagging_pb2 import StreamMetricResponse


@dataclass
class Request:
    """One stream as the server saw it."""

    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray)


#: what to do once a request's body ended: (server, connection, stream id, request)
Behaviour = Callable[["ScriptedServer", "_Protocol", int, Request], None]


def ok(server: ScriptedServer, proto: _Protocol, stream_id: int, request: Request) -> None:
    """Answer OK with ``received`` = the number of gRPC messages in the body."""
    count, body = 0, bytes(request.body)
    while body:
        size = int.from_bytes(body[1:5], "big")
        body = body[5 + size :]
        count += 1
    message = StreamMetricResponse(received=count).SerializeToString()
    proto.conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/grpc")])
    proto.conn.send_data(stream_id, b"\x00" + len(message).to_bytes(4, "big") + message)
    proto.conn.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)


class _Protocol(asyncio.Protocol):
    def __init__(self, server: ScriptedServer) -> None:
        self.server = server
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, Request] = {}
        #: a frozen connection reads nothing and answers nothing, PINGs included
        self.frozen = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections += 1
        self.server.protocols.append(self)
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        if self.frozen:
            return
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                headers = {str(k): str(v) for k, v in event.headers or []}
                request = Request(headers)
                self.requests[event.stream_id or 0] = request
                self.server.requests.append(request)
            elif isinstance(event, h2.events.DataReceived):
                self.requests[event.stream_id or 0].body += event.data or b""
                self.conn.acknowledge_received_data(
                    event.flow_controlled_length or 0, event.stream_id or 0
                )
            elif isinstance(event, h2.events.StreamEnded):
                stream_id = event.stream_id or 0
                self.server.behaviour(self.server, self, stream_id, self.requests[stream_id])
        self.flush()


class ScriptedServer:
    """Serves HTTP/2 on a free loopback port on its own thread; ``behaviour`` answers streams."""

    def __init__(self, behaviour: Behaviour = ok) -> None:
        self.behaviour = behaviour
        self.requests: list[Request] = []
        self.connections = 0
        self.protocols: list[_Protocol] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def target(self) -> str:
        """``127.0.0.1:port``."""
        return f"127.0.0.1:{self.port}"

    async def _start(self) -> None:
        self._server = await self._loop.create_server(lambda: _Protocol(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for protocol in self.protocols:
            if protocol.transport is not None:
                protocol.transport.close()
        await self._server.wait_closed()

    def __enter__(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
