"""A real Havilah gRPC server for demos, tests and benchmarks.

It implements both RPCs and the standard health service, counts what it receives, appends every
received id to a file when asked (after the whole stream arrived and before it acknowledges),
and can misbehave on purpose: fail the first N calls, answer slowly, hang, or reject records.
It listens in plaintext, or with TLS, or with mutual TLS (client certificates required).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tagging_sidecar.contract.tagging.v1 import tagging_pb2, tagging_pb2_grpc

_log = structlog.get_logger("tagging_sidecar.sink")

SERVICE_NAME = "tagging.v1.Havilah"


@dataclass
class Faults:
    """Misbehaviour on purpose; fields may be changed while the server runs."""

    fail_first: int = 0
    fail_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    delay: float = 0.0
    hang: bool = False
    reject_ids: set[str] = field(default_factory=set)
    #: behave like a server that only has StreamMetric
    single_only: bool = False


@dataclass(frozen=True)
class ServerTls:
    """TLS for the sink: its certificate chain and key (PEM files), and optionally the CA that
    client certificates must chain to. With ``client_ca_file`` set, a client without a
    certificate signed by that CA cannot connect (mutual TLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    @property
    def mutual(self) -> bool:
        """Whether client certificates are required."""
        return self.client_ca_file is not None

    def credentials(self) -> grpc.ServerCredentials:
        """The gRPC server credentials (reads the files now)."""
        client_ca = self.client_ca_file.read_bytes() if self.client_ca_file else None
        return grpc.ssl_server_credentials(
            [(self.key_file.read_bytes(), self.cert_file.read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )


@dataclass
class Counters:
    """What the sink has accepted so far."""

    calls: int = 0
    records: int = 0
    failed_calls: int = 0
    rejected_calls: int = 0
    started: float = field(default_factory=time.monotonic)
    last_event_lag: float = 0.0


class _Havilah(tagging_pb2_grpc.HavilahServicer):
    def __init__(self, sink: SinkServer) -> None:
        self._sink = sink

    def StreamMetric(  # noqa: N802 - the gRPC method name
        self, request_iterator: Iterator[tagging_pb2.Tagging], context: grpc.ServicerContext
    ) -> tagging_pb2.StreamMetricResponse:
        return self._sink.accept(request_iterator, context)

    def StreamMetricBatch(  # noqa: N802 - the gRPC method name
        self, request_iterator: Iterator[tagging_pb2.TaggingBatch], context: grpc.ServicerContext
    ) -> tagging_pb2.StreamMetricResponse:
        if self._sink.faults.single_only:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "StreamMetricBatch is not implemented")
        records = (record for batch in request_iterator for record in batch.records)
        return self._sink.accept(records, context)


class SinkServer:
    """The reference server. ``start()`` binds, ``stop()`` shuts it down."""

    def __init__(
        self,
        listen: str = "127.0.0.1:0",
        record_path: Path | None = None,
        faults: Faults | None = None,
        workers: int = 16,
        tls: ServerTls | None = None,
    ) -> None:
        self.faults = faults or Faults()
        self.counters = Counters()
        self.tls = tls
        self._listen = listen
        self._lock = threading.Lock()
        self._record: IO[str] | None = (
            record_path.open("a", encoding="utf-8") if record_path else None
        )
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sink"),
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
        )
        tagging_pb2_grpc.add_HavilahServicer_to_server(_Havilah(self), self._server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self.port = 0

    def start(self) -> int:
        """Bind and serve (with TLS if configured); return the bound port."""
        if self.tls is None:
            self.port = self._server.add_insecure_port(self._listen)
        else:
            self.port = self._server.add_secure_port(self._listen, self.tls.credentials())
        if self.port == 0:
            raise OSError(f"cannot bind {self._listen}")
        self._server.start()
        for name in ("", SERVICE_NAME):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    def set_serving(self, serving: bool) -> None:
        """What the health service answers: ``SERVING`` or ``NOT_SERVING`` (a server that is up
        but cannot take records, e.g. while its own backend is down)."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            self._health.set(name, status)

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving (in-flight calls get ``grace`` seconds) and close the record file."""
        self._health.enter_graceful_shutdown()
        self._server.stop(grace).wait()
        with self._lock:
            if self._record is not None:
                self._record.close()
                self._record = None

    def wait(self) -> None:
        """Block until the server stops."""
        self._server.wait_for_termination()

    def accept(
        self, records: Iterable[tagging_pb2.Tagging], context: grpc.ServicerContext
    ) -> tagging_pb2.StreamMetricResponse:
        """Read a whole stream, apply the faults, record ids, and acknowledge."""
        faults = self.faults
        with self._lock:
            self.counters.calls += 1
            failing = faults.fail_first > 0
            if failing:
                faults.fail_first -= 1
                self.counters.failed_calls += 1
        if failing:
            context.abort(faults.fail_code, "sink fault: failing on purpose")
        if faults.hang:
            # Hold the call until the client's deadline cancels it.
            while context.is_active():
                time.sleep(0.05)
            context.abort(grpc.StatusCode.UNAVAILABLE, "sink fault: hung")
        ids = []
        newest_event = 0.0
        for record in records:
            ids.append(record.id)
            if record.HasField("event_time"):
                newest_event = max(newest_event, record.event_time.ToMicroseconds() / 1e6)
        if faults.reject_ids and not faults.reject_ids.isdisjoint(ids):
            with self._lock:
                self.counters.rejected_calls += 1
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sink fault: record rejected")
        if faults.delay:
            time.sleep(faults.delay)
        with self._lock:
            if self._record is not None:
                self._record.write("".join(f"{i}\n" for i in ids))
                self._record.flush()
            self.counters.records += len(ids)
            if newest_event:
                self.counters.last_event_lag = time.time() - newest_event
        return tagging_pb2.StreamMetricResponse(received=len(ids))

    def summary(self) -> dict[str, float | int]:
        """Counters for the periodic summary line."""
        with self._lock:
            elapsed = max(1e-9, time.monotonic() - self.counters.started)
            return {
                "calls": self.counters.calls,
                "records": self.counters.records,
                "records_per_second": round(self.counters.records / elapsed, 1),
                "failed_calls": self.counters.failed_calls,
                "rejected_calls": self.counters.rejected_calls,
            }
