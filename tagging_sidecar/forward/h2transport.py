"""Client-streaming gRPC calls over one HTTP/2 connection, written with the ``h2`` library.

Why: grpcio hands every stream message to its core separately (a write, a completion, a trip
through the event loop), which costs tens of microseconds per message; a call of 1,000
``StreamMetric`` records costs a thousand of those. gRPC's wire format is just a byte stream of
length-prefixed messages (1 byte "compressed" flag, a 4-byte big-endian length, the bytes), so
this transport frames the whole call at once and hands it to HTTP/2 as one write, split only into
DATA frames as the peer's frame size and flow-control windows allow. The server sees an ordinary
``StreamMetric`` call.

What it does, and what grpcio would do in the same place:

* plaintext, TLS and mutual TLS (ALPN ``h2``), with the same settings as the grpcio channel;
* HTTP/2 flow control: a call larger than the windows waits for ``WINDOW_UPDATE``;
* the call deadline, sent as ``grpc-timeout`` and enforced locally: ``DEADLINE_EXCEEDED``;
* the final status from the trailers (or a trailers-only response, or the HTTP status when there
  is no gRPC status), ``grpc-message`` percent-decoded, raised as :class:`H2CallError`, a
  ``grpc.RpcError`` with ``code()`` and ``details()``;
* ``RST_STREAM`` mapped as the gRPC HTTP/2 spec says; ``GOAWAY`` and a dropped connection fail
  the affected calls with ``UNAVAILABLE``, and the next call opens a new connection;
* many calls at once from any thread, up to the server's ``SETTINGS_MAX_CONCURRENT_STREAMS``
  (the others wait for a free stream), and a maximum message size checked before sending.

Everything runs on one event loop thread; callers block on a future, as with the grpc.aio
transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import urllib.parse
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from tagging_sidecar import __version__
from tagging_sidecar.config import GrpcSettings
from tagging_sidecar.contract.tagging.v1.tagging_pb2 import StreamMetricResponse
from tagging_sidecar.forward.loop import LoopThread

if TYPE_CHECKING:
    from grpc import aio

    from tagging_sidecar.forward.havilah import Transport

__all__ = ["H2CallError", "H2Transport", "parse_target"]

T = TypeVar("T")

_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}

#: RST_STREAM error codes as gRPC reads them (gRPC's PROTOCOL-HTTP2 document); INTERNAL otherwise
#: how often a call refused before processing (REFUSED_STREAM) is sent again
_REFUSED_RETRIES = 3

_RESET_STATUS: dict[int, grpc.StatusCode] = {
    h2.errors.ErrorCodes.REFUSED_STREAM: grpc.StatusCode.UNAVAILABLE,
    h2.errors.ErrorCodes.CANCEL: grpc.StatusCode.CANCELLED,
    h2.errors.ErrorCodes.ENHANCE_YOUR_CALM: grpc.StatusCode.RESOURCE_EXHAUSTED,
    h2.errors.ErrorCodes.INADEQUATE_SECURITY: grpc.StatusCode.PERMISSION_DENIED,
}

#: HTTP statuses of a response without a gRPC status (gRPC's http-grpc-status-mapping document)
_HTTP_STATUS = {
    400: grpc.StatusCode.INTERNAL,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.UNIMPLEMENTED,
    429: grpc.StatusCode.UNAVAILABLE,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.UNAVAILABLE,
}

_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
_GOAWAY = 0x7
#: how long a new connection (TCP and TLS) may take
_CONNECT_SECONDS = 20.0
#: how long the server has to answer a PING sent after a call ran out of time
_PROBE_SECONDS = 10.0
#: the shortest time between two such PINGs on one connection
_PROBE_INTERVAL = 60.0
_USER_AGENT = f"tagging-sidecar/{__version__} grpc-h2"


class H2CallError(grpc.RpcError):
    """A call's final status other than OK, shaped like grpcio's errors."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        """The gRPC status code."""
        return self._code

    def details(self) -> str:
        """The status message (from ``grpc-message``, or what went wrong locally)."""
        return self._details


def parse_target(target: str) -> tuple[str, int]:
    """``(host, port)`` of ``host:port``, ``[v6]:port``, ``dns:///host:port`` or ``dns:host:port``.

    Raises ``ValueError`` for any other form (``unix:``, ``ipv4:a,b``, a name without a port):
    those stay with the grpcio channel.
    """
    rest = target
    if rest.startswith("dns:"):
        rest = rest[len("dns:") :]
        if rest.startswith("//"):
            # dns://authority/host:port: the DNS authority is not ours to choose.
            rest = rest[rest.index("/", 2) + 1 :] if "/" in rest[2:] else ""
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]:")
    else:
        host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or ("/" in host) or ("," in host):
        raise ValueError(f"unsupported gRPC target for the HTTP/2 transport: {target!r}")
    return host, int(port)


def _grpc_timeout(seconds: float) -> str:
    """``grpc-timeout``: at most 8 digits and a unit."""
    millis = max(1, int(seconds * 1000 + 0.999))
    if millis < 100_000_000:
        return f"{millis}m"
    return f"{min(99_999_999, int(seconds + 0.999))}S"


def frame_messages(messages: Sequence[bytes], max_message_bytes: int) -> bytes:
    """Every message with its gRPC prefix (not compressed, 4-byte length), as one buffer."""
    parts: list[bytes] = []
    append = parts.append
    for message in messages:
        size = len(message)
        if size > max_message_bytes:
            raise H2CallError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"message of {size} bytes is larger than the limit of {max_message_bytes}",
            )
        append(b"\x00" + size.to_bytes(4, "big"))
        append(message)
    return b"".join(parts)


class _Call:
    """One stream's state, filled in by the connection as events arrive."""

    __slots__ = ("data", "done", "headers", "refused", "stream_id", "trailers")

    def __init__(self, stream_id: int, done: asyncio.Future[None]) -> None:
        self.stream_id = stream_id
        self.done = done
        self.headers: dict[str, str] = {}
        self.trailers: dict[str, str] = {}
        self.data = bytearray()
        #: reset with REFUSED_STREAM before any answer: the server processed nothing
        self.refused = False

    def fail(self, code: grpc.StatusCode, details: str) -> None:
        """End the call with this status unless it has ended already."""
        if not self.done.done():
            self.done.set_exception(H2CallError(code, details))

    def finish(self) -> None:
        """The server ended its side of the stream: the status is in hand."""
        if not self.done.done():
            self.done.set_result(None)


def _keep_alive(sock: socket.socket | None) -> None:
    """TCP keepalive: an idle connection to a vanished peer is found in about a minute.

    Done by the kernel, so it costs no HTTP/2 PINGs, which grpc servers ration.
    """
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def _text(value: bytes | str) -> str:
    # A header that is not UTF-8 must not break the event loop: it only makes a status unclear.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _headers(pairs: Any) -> dict[str, str]:
    return {_text(name): _text(value) for name, value in pairs}


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection: the h2 state machine, its socket, and the calls on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.transport: asyncio.Transport | None = None
        self.calls: dict[int, _Call] = {}
        #: no new calls: GOAWAY received, connection lost, or stream ids used up
        self.closing = False
        self.error = ""
        self._changed: asyncio.Future[None] = loop.create_future()
        self._writable: asyncio.Future[None] | None = None
        self._probe: asyncio.TimerHandle | None = None
        self._probed_at = -float("inf")
        self._inbox = b""
        self._settled = False
        #: done once the socket is closed
        self.gone: asyncio.Future[None] = loop.create_future()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the connection preface and our settings."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        _keep_alive(transport.get_extra_info("socket"))
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            # No MAX_CONCURRENT_STREAMS of 0: h2 would then take the trailers of a stream we
            # reset, once forgotten, for a new stream of the server's and fail the connection.
            initial_values={h2.settings.SettingCodes.ENABLE_PUSH: 0},
        )
        self.h2.initiate_connection()
        self.flush()

    def _without_goaway(self, data: bytes) -> bytes:
        """The complete frames received so far, less any GOAWAY, which is handled here.

        h2 closes its whole connection state on GOAWAY and then refuses every later frame, but
        a graceful GOAWAY (a server rotating its connections, as grpc servers do with a maximum
        connection age) lets the streams it already took finish: their DATA, trailers and
        WINDOW_UPDATEs still come. So GOAWAY frames are taken out before h2 sees them.
        """
        inbox = self._inbox + data if self._inbox else data
        keep: list[bytes] = []
        start = position = 0
        while len(inbox) - position >= 9:
            end = position + 9 + int.from_bytes(inbox[position : position + 3], "big")
            if end > len(inbox):
                break
            if inbox[position + 3] == _GOAWAY:
                keep.append(inbox[start:position])
                self._goaway(inbox[position + 9 : end])
                start = end
            position = end
        keep.append(inbox[start:position])
        self._inbox = inbox[position:]
        return b"".join(keep)

    def _goaway(self, payload: bytes) -> None:
        last = int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF
        number = int.from_bytes(payload[4:8], "big")
        try:
            error = h2.errors.ErrorCodes(number).name
        except ValueError:
            error = str(number)
        self.closing = True
        self.error = f"GOAWAY from the server ({error})"
        for stream_id, call in list(self.calls.items()):
            # Streams above last_stream_id were never processed: safe to send again. The
            # others go on until their status, or until the server closes the socket.
            if stream_id > last:
                call.fail(grpc.StatusCode.UNAVAILABLE, self.error)
        self._wake()

    def data_received(self, data: bytes) -> None:
        """Feed the bytes to h2 and act on the events they make."""
        try:
            events = self.h2.receive_data(self._without_goaway(data))
        except h2.exceptions.ProtocolError as exc:
            self.flush()
            self.lost(f"HTTP/2 protocol error from the server: {type(exc).__name__}")
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            self._handle(event)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail every call still open: the server will not answer them now."""
        self.lost("connection lost" + (f": {exc}" if exc else ""))
        if not self.gone.done():
            self.gone.set_result(None)

    def pause_writing(self) -> None:
        """The socket's buffer is full: senders wait until it drains."""
        if self._writable is None:
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        """The socket's buffer drained."""
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    # events

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            call = self.calls.get(event.stream_id or 0)
            if event.flow_controlled_length and event.stream_id:
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if call is not None and event.data:
                call.data += event.data
                if len(call.data) > _MAX_RESPONSE_BYTES + 5:
                    call.fail(grpc.StatusCode.RESOURCE_EXHAUSTED, "response too large")
                    self.reset(call.stream_id)
        elif isinstance(event, h2.events.ResponseReceived):
            call = self.calls.get(event.stream_id or 0)
            if call is not None:
                call.headers = _headers(event.headers or [])
        elif isinstance(event, h2.events.TrailersReceived):
            call = self.calls.get(event.stream_id or 0)
            if call is not None:
                call.trailers = _headers(event.headers or [])
        elif isinstance(event, h2.events.StreamEnded):
            call = self.calls.get(event.stream_id or 0)
            if call is not None:
                call.finish()
        elif isinstance(event, h2.events.StreamReset):
            call = self.calls.get(event.stream_id or 0)
            if call is not None:
                code = _RESET_STATUS.get(event.error_code or 0, grpc.StatusCode.INTERNAL)
                refused = event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
                call.refused = refused and not call.headers
                call.fail(code, f"stream reset by the server ({event.error_code!s})")
            self._wake()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            if isinstance(event, h2.events.RemoteSettingsChanged):
                self._settled = True
            self._wake()
        elif isinstance(event, h2.events.PingAckReceived) and self._probe is not None:
            self._probe.cancel()
            self._probe = None

    def _wake(self) -> None:
        changed, self._changed = self._changed, self._loop.create_future()
        if not changed.done():
            changed.set_result(None)

    # helpers for the calls

    async def settled(self) -> None:
        """Wait for the server's first SETTINGS, or for the connection to end."""
        while not self._settled and not self.closing:
            await self.changed()

    async def changed(self) -> None:
        """Wait until a window opens, a stream closes, or the connection changes."""
        await asyncio.shield(self._changed)

    async def writable(self) -> None:
        """Wait until the socket takes more bytes."""
        while self._writable is not None and not self.closing:
            await asyncio.shield(self._writable)

    def flush(self) -> None:
        """Write whatever h2 has queued to the socket."""
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def reset(self, stream_id: int) -> None:
        """Tell the server that we give up on a stream (it may already be closed)."""
        with contextlib.suppress(h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        self.flush()

    def release(self, stream_id: int) -> None:
        """A call is over: reset its stream unless closed, and let waiting calls have it."""
        stream = self.h2.streams.get(stream_id)
        if stream is not None and not stream.closed:
            self.reset(stream_id)
        if self.closing and not self.calls:
            self.close()
        self._wake()

    def probe(self, seconds: float, interval: float) -> None:
        """Send a PING; without its answer within ``seconds`` the connection counts as dead.

        A call that ran out of time says nothing of the connection; a silent peer (a network
        partition, a frozen server) would otherwise keep every later call waiting until its
        deadline too, and the connection would never be replaced.
        """
        # grpc servers count PINGs that come closer than their keepalive policy allows (five
        # minutes by default) while they send nothing, and close the connection after a few:
        # a server that hangs calls must not make us look abusive, hence at most one per
        # ``interval``.
        now = self._loop.time()
        if self._probe is not None or self.closing or now - self._probed_at < interval:
            return
        self._probed_at = now
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.ping(b"tgsc-liv")
            self.flush()
            self._probe = self._loop.call_later(seconds, self._silent, seconds)

    def _silent(self, seconds: float) -> None:
        self._probe = None
        self.lost(f"no answer to a PING within {seconds:g} s")
        if self.transport is not None:
            self.transport.abort()

    def lost(self, reason: str) -> None:
        """The connection is unusable: fail its open calls with UNAVAILABLE."""
        self.closing = True
        self.error = self.error or reason
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        for call in list(self.calls.values()):
            call.fail(grpc.StatusCode.UNAVAILABLE, reason)
        self._wake()
        self.resume_writing()

    def close(self) -> None:
        """Say goodbye and close the socket."""
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection()
            self.flush()
            self.transport.close()


class H2Transport:
    """Client-streaming calls over HTTP/2 from any thread; owns its loop thread and connection.

    :meth:`stream` is the only call; readiness checks and background work belong to the grpcio
    channel the sidecar keeps beside it (see :class:`SplitTransport`).
    """

    def __init__(
        self,
        settings: GrpcSettings,
        probe_seconds: float = _PROBE_SECONDS,
        probe_interval: float = _PROBE_INTERVAL,
    ) -> None:
        self._settings = settings
        self._probe_seconds = probe_seconds
        self._probe_interval = probe_interval
        self._host, self._port = parse_target(settings.target)
        self._authority = settings.target.split("///")[-1].removeprefix("dns:")
        self._ssl = self._ssl_context(settings)
        self._runner = LoopThread("grpc-h2-loop")
        self._loop = self._runner.loop
        self._thread = self._runner.thread
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._connections: set[_Connection] = set()
        #: connections opened so far (for tests and diagnostics)
        self.connections_opened = 0
        self._closed = False

    @staticmethod
    def _ssl_context(settings: GrpcSettings) -> ssl.SSLContext | None:
        if not settings.tls:
            return None
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH,
            cafile=str(settings.ca_file) if settings.ca_file else None,
        )
        if settings.cert_file and settings.key_file:
            context.load_cert_chain(str(settings.cert_file), str(settings.key_file))
        context.set_alpn_protocols(["h2"])
        return context

    # the connection

    async def _connect(self) -> _Connection:
        """The live connection, opening one when there is none (one opener at a time)."""
        connection = self._connection
        if connection is not None and not connection.closing:
            return connection
        if self._connecting is None:
            self._connecting = self._loop.create_future()
            opener = self._loop.create_task(self._open())
            opener.add_done_callback(self._opened)
        # Shielded: a caller whose deadline ends does not stop the connect for the others.
        return await asyncio.shield(self._connecting)

    def _opened(self, opener: asyncio.Task[_Connection]) -> None:
        connecting, self._connecting = self._connecting, None
        assert connecting is not None
        if opener.cancelled():
            connecting.set_exception(
                H2CallError(grpc.StatusCode.UNAVAILABLE, "connect was cancelled")
            )
        elif (exc := opener.exception()) is not None:
            connecting.set_exception(exc)
        else:
            self._connection = opener.result()
            self.connections_opened += 1
            connecting.set_result(self._connection)
        if not connecting.cancelled():
            # Marks the error as seen: nobody may be waiting any more (their deadlines ended).
            connecting.exception()

    async def _open(self) -> _Connection:
        self._connection = None
        # A connection that got GOAWAY keeps serving its calls; once they are done it goes.
        for old in [c for c in self._connections if c.closing and not c.calls]:
            old.close()
        if self._closed:
            raise H2CallError(grpc.StatusCode.CANCELLED, "the transport is closed")
        try:
            async with asyncio.timeout(_CONNECT_SECONDS):
                _, connection = await self._loop.create_connection(
                    lambda: _Connection(self._loop),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            raise H2CallError(
                grpc.StatusCode.UNAVAILABLE,
                f"cannot connect to {self._settings.target}: {exc}",
            ) from None
        # Tracked until its socket is closed, so that close() can wait for every one.
        self._connections.add(connection)
        connection.gone.add_done_callback(lambda _: self._connections.discard(connection))
        if self._ssl is not None:
            transport = connection.transport
            ssl_object = transport.get_extra_info("ssl_object") if transport else None
            protocol = ssl_object.selected_alpn_protocol() if ssl_object else None
            if protocol != "h2":
                connection.close()
                raise H2CallError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"{self._settings.target} did not agree to HTTP/2 (ALPN {protocol!r})",
                )
        # The server's SETTINGS (its stream limit, frame size, windows) before the first call,
        # so that a burst of calls does not open more streams than it allows.
        try:
            async with asyncio.timeout(_CONNECT_SECONDS):
                await connection.settled()
        except TimeoutError:
            connection.close()
            raise H2CallError(
                grpc.StatusCode.UNAVAILABLE,
                f"{self._settings.target} sent no HTTP/2 SETTINGS within {_CONNECT_SECONDS:g} s",
            ) from None
        if connection.closing:
            raise H2CallError(grpc.StatusCode.UNAVAILABLE, connection.error)
        return connection

    # one call

    def _request_headers(self, method: str, timeout: float) -> list[tuple[str, str]]:
        return [
            (":method", "POST"),
            (":scheme", "https" if self._ssl else "http"),
            (":path", method),
            (":authority", self._authority),
            ("te", "trailers"),
            ("content-type", "application/grpc"),
            ("user-agent", _USER_AGENT),
            ("grpc-timeout", _grpc_timeout(timeout)),
        ]

    async def _stream_id(self, connection: _Connection, method: str, timeout: float) -> int | None:
        """Open a stream once the server's concurrent-stream limit leaves room for one.

        None when the connection stopped taking new streams meanwhile (GOAWAY, lost, or out of
        stream ids): the call then goes to a new connection.
        """
        h2conn = connection.h2
        while True:
            if connection.closing:
                return None
            if h2conn.open_outbound_streams < h2conn.remote_settings.max_concurrent_streams:
                break
            await connection.changed()
        try:
            stream_id = h2conn.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            connection.closing = True
            connection.error = "stream ids used up"
            return None
        h2conn.send_headers(stream_id, self._request_headers(method, timeout))
        return stream_id

    async def _send_body(self, connection: _Connection, call: _Call, body: bytes) -> None:
        """Send ``body`` as DATA frames as the windows allow, then end our side."""
        h2conn = connection.h2
        view = memoryview(body)
        offset = 0
        while offset < len(view):
            if call.done.done():
                return  # the server answered (or reset) before reading everything
            window = h2conn.local_flow_control_window(call.stream_id)
            if window <= 0:
                connection.flush()
                await connection.changed()
                continue
            frame = h2conn.max_outbound_frame_size
            end = min(len(view), offset + window)
            while offset < end:
                chunk = min(frame, end - offset)
                h2conn.send_data(call.stream_id, view[offset : offset + chunk])
                offset += chunk
            connection.flush()
            await connection.writable()
        if not call.done.done():
            h2conn.end_stream(call.stream_id)
            connection.flush()

    async def _call(self, method: str, body: bytes, timeout: float) -> StreamMetricResponse:
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(timeout):
                for attempt in range(_REFUSED_RETRIES + 1):
                    while True:
                        connection = await self._connect()
                        stream_id = await self._stream_id(connection, method, timeout)
                        if stream_id is not None:
                            break
                    call = _Call(stream_id, self._loop.create_future())
                    try:
                        await self._exchange(connection, call, body)
                        break
                    except H2CallError:
                        # A refused stream was never processed (a server at its stream limit
                        # before our SETTINGS view caught up): send it again, as gRPC allows.
                        if not call.refused or attempt == _REFUSED_RETRIES:
                            raise
        except TimeoutError:
            if connection is not None:
                connection.probe(self._probe_seconds, self._probe_interval)
            raise
        return self._response(call)

    async def _exchange(self, connection: _Connection, call: _Call, body: bytes) -> None:
        """Send ``body`` on ``call``'s stream and wait for its end (raises its failure)."""
        stream_id = call.stream_id
        connection.calls[stream_id] = call
        try:
            try:
                await self._send_body(connection, call, body)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                # The stream closed while sending: its status, if any, tells why.
                if not call.done.done():
                    call.fail(grpc.StatusCode.UNAVAILABLE, connection.error or "stream closed")
            await call.done
        finally:
            del connection.calls[stream_id]
            # Given up on, or answered before we sent everything: free the stream.
            connection.release(stream_id)

    @staticmethod
    def _response(call: _Call) -> StreamMetricResponse:
        # A trailers-only response carries the status in its headers.
        status_headers = call.trailers or call.headers
        http_status = call.headers.get(":status", "")
        if "grpc-status" not in status_headers:
            if http_status != "200":
                code = _HTTP_STATUS.get(int(http_status or 0), grpc.StatusCode.UNKNOWN)
                raise H2CallError(code, f"HTTP status {http_status or 'missing'}")
            raise H2CallError(grpc.StatusCode.INTERNAL, "the server sent no grpc-status")
        number = status_headers["grpc-status"]
        code = grpc.StatusCode.UNKNOWN
        if number.isdigit():
            code = _STATUS_BY_NUMBER.get(int(number), grpc.StatusCode.UNKNOWN)
        if code is not grpc.StatusCode.OK:
            details = urllib.parse.unquote(status_headers.get("grpc-message", ""))
            raise H2CallError(code, details)
        data = bytes(call.data)
        if len(data) < 5:
            raise H2CallError(grpc.StatusCode.INTERNAL, "OK without a response message")
        if data[0] != 0:
            raise H2CallError(grpc.StatusCode.INTERNAL, "compressed response (none was accepted)")
        size = int.from_bytes(data[1:5], "big")
        if len(data) != 5 + size:
            raise H2CallError(grpc.StatusCode.INTERNAL, "response is not exactly one message")
        return StreamMetricResponse.FromString(data[5:])

    async def _guarded_call(self, method: str, body: bytes, timeout: float) -> StreamMetricResponse:
        try:
            return await self._call(method, body, timeout)
        except TimeoutError:
            raise H2CallError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {timeout:g} s"
            ) from None

    def stream(self, method: str, messages: list[bytes], timeout: float) -> StreamMetricResponse:
        """One client-streaming call of ``method``; raises :class:`H2CallError` on failure."""
        if self._closed:
            raise H2CallError(grpc.StatusCode.CANCELLED, "the transport is closed")
        body = frame_messages(messages, self._settings.max_message_bytes)
        future = asyncio.run_coroutine_threadsafe(
            self._guarded_call(method, body, timeout), self._loop
        )
        try:
            # The deadline is enforced on the loop; the extra second only guards a lost loop.
            return future.result(timeout + 1.0)
        except TimeoutError:
            future.cancel()
            raise

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the transport's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def close(self) -> None:
        """Fail calls in flight with CANCELLED, close the connection, stop the loop thread."""
        if self._closed:
            return
        self._closed = True

        async def shut() -> None:
            connections = list(self._connections)
            for connection in connections:
                for call in list(connection.calls.values()):
                    call.fail(grpc.StatusCode.CANCELLED, "the transport is closing")
                connection.close()
            # TLS says goodbye before the socket closes; give it a moment, then cut it short.
            gone = [c.gone for c in connections if not c.gone.done()]
            if gone:
                await asyncio.wait(gone, timeout=1.0)
            for connection in connections:
                if not connection.gone.done() and connection.transport is not None:
                    connection.transport.abort()
            await asyncio.sleep(0)  # abort closes the socket on the next loop turn

        try:
            if self._thread.is_alive():
                self.run(shut(), timeout=5)
        finally:
            self._runner.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SplitTransport:
    """``StreamMetric`` over :class:`H2Transport`; everything else over the grpcio transport.

    The grpcio channel stays for ``StreamMetricBatch``, readiness, connectivity state and the
    background health checks, so this is a drop-in :class:`~tagging_sidecar.forward.Transport`.
    """

    def __init__(
        self, h2_transport: H2Transport, fallback: Transport, h2_methods: tuple[str, ...]
    ) -> None:
        self._h2 = h2_transport
        self._fallback = fallback
        self._h2_methods = frozenset(h2_methods)

    def stream(self, method: str, messages: list[bytes], timeout: float) -> StreamMetricResponse:
        """One client-streaming call on whichever transport serves ``method``."""
        if method in self._h2_methods:
            return self._h2.stream(method, messages, timeout)
        return self._fallback.stream(method, messages, timeout)

    def wait_ready(self, timeout: float) -> bool:
        """Whether the grpcio channel became ready within ``timeout`` seconds."""
        return self._fallback.wait_ready(timeout)

    def background(self, work: Callable[[aio.Channel], Coroutine[Any, Any, None]]) -> None:
        """Run ``work(channel)`` on the grpcio channel's loop."""
        self._fallback.background(work)

    def close(self) -> None:
        """Close both transports."""
        try:
            self._h2.close()
        finally:
            self._fallback.close()
