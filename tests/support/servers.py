"""Havilah servers that misbehave in one specific, realistic way, for the fault-path tests.

They are plain grpcio servers on 127.0.0.1 implementing ``tagging.v1.Havilah`` from the contract
(not the reference sink), and each remembers the ids it stored, in order, duplicates kept.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from concurrent import futures
from types import TracebackType
from typing import Self

import grpc

from tagging_sidecar.contract.tagging.v1 import tagging_pb2, tagging_pb2_grpc

Records = Iterable[tagging_pb2.Tagging]
Response = tagging_pb2.StreamMetricResponse


class HavilahServer(tagging_pb2_grpc.HavilahServicer):
    """A Havilah server that stores every record it reads; subclasses override :meth:`handle`.

    ``batch_rpc=False`` answers StreamMetricBatch with UNIMPLEMENTED, like servers built on the
    original contract that only had StreamMetric. Use as a context manager: it listens on a free
    loopback port (``target``) inside the ``with`` block.
    """

    def __init__(self, batch_rpc: bool = True) -> None:
        self.batch_rpc = batch_rpc
        self.lock = threading.Lock()
        self.stored: list[str] = []
        self.calls = 0
        self.batch_calls = 0
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="test-havilah"),
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
        )
        tagging_pb2_grpc.add_HavilahServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def target(self) -> str:
        """The address to give the sidecar."""
        return f"127.0.0.1:{self.port}"

    def stored_ids(self) -> list[str]:
        """A copy of the ids stored so far, in arrival order."""
        with self.lock:
            return list(self.stored)

    def store(self, record_id: str) -> None:
        """Remember one stored record."""
        with self.lock:
            self.stored.append(record_id)

    def StreamMetric(
        self, request_iterator: Iterator[tagging_pb2.Tagging], context: grpc.ServicerContext
    ) -> tagging_pb2.StreamMetricResponse:
        """One record per message."""
        with self.lock:
            self.calls += 1
        return self.handle(request_iterator, context)

    def StreamMetricBatch(
        self, request_iterator: Iterator[tagging_pb2.TaggingBatch], context: grpc.ServicerContext
    ) -> tagging_pb2.StreamMetricResponse:
        """Many records per message, unless this server plays one without the batch RPC."""
        if not self.batch_rpc:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "StreamMetricBatch is not implemented")
        with self.lock:
            self.calls += 1
            self.batch_calls += 1
        return self.handle((r for batch in request_iterator for r in batch.records), context)

    def handle(
        self, records: Records, context: grpc.ServicerContext
    ) -> tagging_pb2.StreamMetricResponse:
        """Store the whole stream and acknowledge it."""
        count = 0
        for record in records:
            self.store(record.id)
            count += 1
        return tagging_pb2.StreamMetricResponse(received=count)

    def __enter__(self) -> Self:
        """Start serving."""
        self._server.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop serving (in-flight calls are cancelled)."""
        self._server.stop(0.5).wait()


class IdempotentServer(HavilahServer):
    """Stores each id once; a stream that carries an id it already holds ends with
    ALREADY_EXISTS at that id, and nothing after it in the stream is stored."""

    def __init__(self, batch_rpc: bool = True) -> None:
        super().__init__(batch_rpc)
        self.held: set[str] = set()
        self.already_exists = 0

    def handle(
        self, records: Records, context: grpc.ServicerContext
    ) -> tagging_pb2.StreamMetricResponse:
        """Store up to the first id already held."""
        count = 0
        for record in records:
            with self.lock:
                known = record.id in self.held
                if known:
                    self.already_exists += 1
                else:
                    self.held.add(record.id)
                    self.stored.append(record.id)
            if known:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"{record.id} already stored")
            count += 1
        return tagging_pb2.StreamMetricResponse(received=count)


class AbortHalfwayServer(HavilahServer):
    """The first ``failures`` streams of two or more records store their first half, then end
    with ``code`` (a retryable status); later streams are stored whole."""

    def __init__(self, failures: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        super().__init__()
        self.failures = failures
        self.code = code
        self.aborted = 0

    def handle(
        self, records: Records, context: grpc.ServicerContext
    ) -> tagging_pb2.StreamMetricResponse:
        """Read the stream; maybe store half of it and abort."""
        batch = list(records)
        with self.lock:
            abort = self.aborted < self.failures and len(batch) >= 2
            if abort:
                self.aborted += 1
        kept = batch[: len(batch) // 2] if abort else batch
        for record in kept:
            self.store(record.id)
        if abort:
            context.abort(self.code, "stream aborted half way on purpose")
        return tagging_pb2.StreamMetricResponse(received=len(batch))


class ShortCountServer(HavilahServer):
    """Stores every record but, for the first ``times`` streams of two or more records, answers
    ``received`` one smaller than what was sent."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times
        self.short_answers = 0

    def handle(
        self, records: Records, context: grpc.ServicerContext
    ) -> tagging_pb2.StreamMetricResponse:
        """Store all, maybe under-report."""
        batch = list(records)
        for record in batch:
            self.store(record.id)
        with self.lock:
            short = self.short_answers < self.times and len(batch) >= 2
            if short:
                self.short_answers += 1
        return tagging_pb2.StreamMetricResponse(received=len(batch) - 1 if short else len(batch))


class HangingServer(HavilahServer):
    """While :attr:`hanging` is set, holds every call past the client's deadline and stores
    nothing; clear it and calls are served normally."""

    def __init__(self) -> None:
        super().__init__()
        self.hanging = threading.Event()
        self.hanging.set()
        self.hung_calls = 0
        #: the seconds each hung call had left of the client's deadline when it arrived
        self.hung_deadlines: list[float] = []

    def handle(
        self, records: Records, context: grpc.ServicerContext
    ) -> tagging_pb2.StreamMetricResponse:
        """Hang until the client gives up, or store."""
        if self.hanging.is_set():
            with self.lock:
                self.hung_calls += 1
                self.hung_deadlines.append(context.time_remaining() or 0.0)
            while context.is_active():
                time.sleep(0.05)
            context.abort(grpc.StatusCode.UNAVAILABLE, "hung on purpose")
        return super().handle(records, context)


class SlowRejectServer(HavilahServer):
    """Rejects every call that carries an id in :attr:`poison` with ``INVALID_ARGUMENT``; the
    first such call is held for ``delay`` seconds before the answer, so that its result comes
    back late. Every other call is stored."""

    def __init__(self, poison: set[str], delay: float) -> None:
        super().__init__()
        self.poison = poison
        self.delay = delay
        self.held_calls = 0

    def handle(
        self, records: Records, context: grpc.ServicerContext
    ) -> tagging_pb2.StreamMetricResponse:
        """Hold the first poisoned call, then reject it; reject later ones at once."""
        batch = list(records)
        if not any(record.id in self.poison for record in batch):
            return super().handle(iter(batch), context)
        with self.lock:
            self.held_calls += 1
            first = self.held_calls == 1
        if first:
            time.sleep(self.delay)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "poison")
        raise AssertionError("unreachable: abort raises")
