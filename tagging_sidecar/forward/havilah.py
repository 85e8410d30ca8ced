"""The Havilah client: one client-streaming call per batch, with deadlines and retries.

Records travel as the bytes they arrived in: the call's request serializer is the identity, so
``StreamMetric`` sends each record's bytes as one ``Tagging`` message and ``StreamMetricBatch``
sends ``TaggingBatch`` messages built by :mod:`tagging_sidecar.forward.wire`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import structlog
from grpc import aio

from tagging_sidecar.config import GrpcMode, GrpcSettings, SingleTransport
from tagging_sidecar.contract.tagging.v1.tagging_pb2 import StreamMetricResponse
from tagging_sidecar.errors import ForwardError, PermanentForwardError, RetryableForwardError
from tagging_sidecar.forward.status import Outcome, classify
from tagging_sidecar.forward.wire import batch_messages

_log = structlog.get_logger("tagging_sidecar.forward")

SINGLE_METHOD = "/tagging.v1.Havilah/StreamMetric"
BATCH_METHOD = "/tagging.v1.Havilah/StreamMetricBatch"


@dataclass(frozen=True, slots=True)
class CallResult:
    """What one call did, for metrics: how many records, how long, which status."""

    records: int
    seconds: float
    code: str


#: failures that come from this side of the call, not from the server
_NOT_THE_SERVERS = frozenset({"DEADLINE_EXCEEDED", "CANCELLED", "LOCAL_ERROR"})


class _SomeAlreadyStored(PermanentForwardError):
    """``ALREADY_EXISTS`` for a call: some record of it is stored, maybe not the others."""


class Transport(Protocol):
    """One channel to the server: client-streaming calls, readiness, close."""

    def stream(self, method: str, messages: list[bytes], timeout: float) -> StreamMetricResponse:
        """One client-streaming call; raises ``grpc.RpcError`` with the final status."""

    def wait_ready(self, timeout: float) -> bool:
        """Whether the channel became ready within ``timeout`` seconds."""

    def background(self, work: Callable[[aio.Channel], Coroutine[Any, Any, None]]) -> None:
        """Run ``work(channel)`` alongside the calls until :meth:`close`."""

    def close(self) -> None:
        """Release the channel."""


class HavilahClient:
    """Delivers lists of serialized ``Tagging`` records; safe to share between threads."""

    def __init__(
        self,
        settings: GrpcSettings,
        transport: Transport,
        cancel: threading.Event | None = None,
        observe: Callable[[CallResult], None] | None = None,
        on_retry: Callable[[int], None] | None = None,
    ) -> None:
        self._settings = settings
        self._cancel = cancel or threading.Event()
        self._observe = observe
        self._on_retry = on_retry
        self._batch = settings.mode is GrpcMode.BATCH
        self._transport = transport

    def background(self, work: Callable[[aio.Channel], Coroutine[Any, Any, None]]) -> None:
        """Run ``work(channel)`` on the client's event loop until :meth:`close`."""
        self._transport.background(work)

    def close(self) -> None:
        """Close the channel."""
        self._transport.close()

    def wait_ready(self, timeout: float) -> None:
        """Block until the channel is connected; raise RetryableForwardError on timeout."""
        if not self._transport.wait_ready(timeout):
            raise RetryableForwardError(
                f"gRPC target {self._settings.target} not reachable within {timeout:.1f} s",
                code="UNAVAILABLE",
            )

    def deliver(
        self, payloads: Sequence[bytes], once_within: float | None = None
    ) -> list[tuple[int, ForwardError]]:
        """Deliver ``payloads`` in order; return (index, error) of each record rejected for good.

        Retryable failures are retried with exponential backoff and jitter until they succeed,
        ``max_attempts`` is used up, or the client is cancelled (then the last error is raised
        and nothing of the batch counts as delivered). With ``once_within``, each call gets one
        attempt and a deadline of at most that many seconds, and the first failure is raised.
        A permanent rejection of several records is narrowed down by halving, so one bad
        record does not take its neighbours with it;
        ``ALREADY_EXISTS`` is narrowed down the same way, and counts as delivered only for a
        call of one record, since a stream ends at the first record the server already holds.
        """
        try:
            self._deliver_with_retries(payloads, once_within)
            return []
        except _SomeAlreadyStored:
            if len(payloads) == 1:
                return []
        except PermanentForwardError as exc:
            if len(payloads) == 1:
                return [(0, exc)]
        middle = len(payloads) // 2
        rejected = self.deliver(payloads[:middle], once_within)
        rejected += [(i + middle, e) for i, e in self.deliver(payloads[middle:], once_within)]
        return rejected

    def _deliver_with_retries(self, payloads: Sequence[bytes], once_within: float | None) -> None:
        settings = self._settings
        timeout = settings.timeout if once_within is None else min(settings.timeout, once_within)
        delay = settings.retry_initial_backoff
        attempt = 0
        while True:
            try:
                self._send(payloads, timeout)
                return
            except RetryableForwardError as exc:
                # Only the server's answers count against max_attempts: our own deadline or a
                # local failure says nothing about the records.
                if exc.code not in _NOT_THE_SERVERS:
                    attempt += 1
                if (
                    once_within is not None
                    or self._cancel.is_set()
                    or (settings.max_attempts and attempt >= settings.max_attempts)
                ):
                    raise
                pause = random.uniform(delay / 2, delay)
                _log.warning(
                    "delivery failed, retrying",
                    code=exc.code,
                    error=str(exc),
                    records=len(payloads),
                    attempt=attempt,
                    retry_in=round(pause, 3),
                )
                if self._on_retry is not None:
                    self._on_retry(len(payloads))
                if self._cancel.wait(pause):
                    raise
                delay = min(settings.retry_max_backoff, delay * 2)

    def _requests(self, payloads: Sequence[bytes], batch: bool) -> list[bytes]:
        if batch:
            return list(batch_messages(payloads, self._settings.max_message_bytes - 64))
        return list(payloads)

    def _send(self, payloads: Sequence[bytes], timeout: float) -> None:
        started = time.perf_counter()
        code = "OK"
        try:
            batch = self._batch
            method = BATCH_METHOD if batch else SINGLE_METHOD
            response = self._transport.stream(method, self._requests(payloads, batch), timeout)
        except grpc.RpcError as exc:
            status = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            code = status.name
            if status is grpc.StatusCode.UNIMPLEMENTED and batch:
                # A server with only StreamMetric: say so once and carry on one record per
                # message, instead of retrying a method that will never exist.
                self._batch = False
                _log.warning(
                    "server does not implement StreamMetricBatch; using StreamMetric",
                    target=self._settings.target,
                )
                raise RetryableForwardError("switching to single mode", code=code) from None
            outcome = classify(status)
            if outcome is Outcome.DELIVERED:
                return
            detail = exc.details() if hasattr(exc, "details") else ""
            message = f"{code} from {self._settings.target}: {detail}"
            if outcome is Outcome.RETRY:
                raise RetryableForwardError(message, code=code) from None
            if outcome is Outcome.ISOLATE:
                raise _SomeAlreadyStored(message, code=code) from None
            raise PermanentForwardError(message, code=code) from None
        except Exception as exc:  # noqa: BLE001 - a local failure is never the server's verdict
            # The transport's own guard timed out, the loop is gone, ...: the server said
            # nothing about these records, so they are sent again rather than rejected.
            code = "LOCAL_ERROR"
            raise RetryableForwardError(
                f"call to {self._settings.target} failed locally: {type(exc).__name__}",
                code=code,
            ) from None
        finally:
            if self._observe is not None:
                self._observe(CallResult(len(payloads), time.perf_counter() - started, code))
        if response.received != len(payloads):
            raise RetryableForwardError(
                f"server acknowledged {response.received} of {len(payloads)} records",
                code="ACK_MISMATCH",
            )


def connect(
    settings: GrpcSettings,
    cancel: threading.Event | None = None,
    observe: Callable[[CallResult], None] | None = None,
    on_retry: Callable[[int], None] | None = None,
    on_state: Callable[[grpc.ChannelConnectivity], None] | None = None,
) -> HavilahClient:
    """A client over a real grpc.aio channel to ``settings.target``.

    With ``single_transport=h2`` (the default), ``StreamMetric`` calls go over the sidecar's own
    HTTP/2 connection instead, the grpc.aio channel keeping batch calls and health checks.
    """
    from tagging_sidecar.forward.transport import AioTransport

    transport: Transport = AioTransport(settings, (BATCH_METHOD, SINGLE_METHOD), on_state=on_state)
    if settings.single_transport is SingleTransport.H2:
        from tagging_sidecar.forward.h2transport import H2Transport, SplitTransport, parse_target

        try:
            parse_target(settings.target)
        except ValueError:
            _log.warning(
                "StreamMetric stays on grpcio: the HTTP/2 client takes host:port targets only",
                target=settings.target,
            )
        else:
            transport = SplitTransport(H2Transport(settings), transport, (SINGLE_METHOD,))
    return HavilahClient(settings, transport, cancel=cancel, observe=observe, on_retry=on_retry)
