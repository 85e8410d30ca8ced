"""A measuring Havilah sink in its own process, with the command line of ``bench/gosink``.

``python -m tests.support.pysink -listen 127.0.0.1:0 -stats 127.0.0.1:0 [-per-record 50us]
[-single-only] [-ids FILE]`` serves both RPCs (``StreamMetric`` only with ``-single-only``),
prints ``LISTEN <addr> STATS <addr>`` once it is ready, and answers ``GET /stats`` (JSON: calls,
records, unique ids, latency quantiles) and ``POST /reset`` (counters and latencies; the ids seen
stay) on the stats address. The latency of a record is its receive time minus its
``event_time``, taken as the sink reads it from the stream.

:class:`PySink` runs it as a context manager with the same small interface the benchmark uses for
the Go sink: ``.target``, ``.stats()``, ``.reset()``, ``.pid``.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import grpc

from tagging_sidecar.contract.tagging.v1 import tagging_pb2
from tagging_sidecar.sink import SinkServer
from tagging_sidecar.sink.server import Faults

PYTHON = sys.executable
# A sink that owes this much per-record time sleeps it off at once: time.sleep() of 50 µs is
# far less precise, and costs more CPU, than one sleep of a millisecond.
_SLEEP_QUANTUM = 0.001


def parse_duration(text: str) -> float:
    """``50us``, ``2ms``, ``0.1s`` or ``0`` as seconds (the Go sink's flag syntax)."""
    for suffix, scale in (("us", 1e-6), ("µs", 1e-6), ("ms", 1e-3), ("s", 1.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text)


class _Stats:
    """What the sink received since the last reset; safe across the server's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0
        self.records = 0
        self.ids: set[str] = set()
        self.latencies_ms: list[float] = []

    def add(self, ids: list[str], latencies_ms: list[float]) -> None:
        with self._lock:
            self.calls += 1
            self.records += len(ids)
            self.ids.update(ids)
            self.latencies_ms.extend(latencies_ms)

    def reset(self) -> None:
        # Like the Go sink's /reset: the ids seen so far stay, so a repeat still shows.
        with self._lock:
            self.calls = self.records = 0
            self.latencies_ms = []

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            ordered = sorted(self.latencies_ms)
            calls, records, unique = self.calls, self.records, len(self.ids)

        def at(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 3)

        latency: dict[str, float] = {"count": len(ordered)}
        if ordered:
            latency.update(p50=at(0.5), p90=at(0.9), p99=at(0.99), max=round(ordered[-1], 3))
        return {"calls": calls, "records": records, "unique_ids": unique, "latency_ms": latency}


class MeasuringSink(SinkServer):
    """The reference server, measuring each record's latency and spending ``per_record`` on it."""

    def __init__(
        self, listen: str, per_record: float, single_only: bool, ids_path: Path | None
    ) -> None:
        super().__init__(listen, faults=Faults(single_only=single_only), workers=32)
        self.stats = _Stats()
        self._per_record = per_record
        self._ids_file: IO[str] | None = ids_path.open("a") if ids_path else None
        self._ids_lock = threading.Lock()

    def accept(
        self, records: Iterable[tagging_pb2.Tagging], context: grpc.ServicerContext
    ) -> tagging_pb2.StreamMetricResponse:
        """Read the stream, noting each record's latency as it arrives, and acknowledge it."""
        ids: list[str] = []
        latencies: list[float] = []
        owed = 0.0
        for record in records:
            received_ns = time.time_ns()
            ids.append(record.id)
            latencies.append((received_ns - record.event_time.ToNanoseconds()) / 1e6)
            owed += self._per_record
            if owed >= _SLEEP_QUANTUM:
                time.sleep(owed)
                owed = 0.0
        if owed:
            time.sleep(owed)
        if self._ids_file is not None:
            with self._ids_lock:
                self._ids_file.write("".join(f"{i}\n" for i in ids))
        self.stats.add(ids, latencies)
        return tagging_pb2.StreamMetricResponse(received=len(ids))


def _stats_handler(stats: _Stats) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/stats":
                self.send_error(404)
                return
            self._answer(stats.snapshot())

        def do_POST(self) -> None:
            if self.path != "/reset":
                self.send_error(404)
                return
            stats.reset()
            self._answer({"reset": True})

        def _answer(self, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


def serve(argv: list[str] | None = None) -> None:
    """The sink's command line (single-dash flags, like the Go sink's)."""
    parser = argparse.ArgumentParser(prog="pysink", description=__doc__)
    parser.add_argument("-listen", default="127.0.0.1:0")
    parser.add_argument("-stats", default="127.0.0.1:0")
    parser.add_argument("-per-record", default="0", dest="per_record")
    parser.add_argument("-single-only", action="store_true", dest="single_only")
    parser.add_argument("-ids", type=Path)
    args = parser.parse_args(argv)
    sink = MeasuringSink(args.listen, parse_duration(args.per_record), args.single_only, args.ids)
    port = sink.start()
    host, _, stats_port = args.stats.rpartition(":")
    http = ThreadingHTTPServer((host, int(stats_port)), _stats_handler(sink.stats))
    threading.Thread(target=http.serve_forever, name="stats", daemon=True).start()
    listen_host = args.listen.rpartition(":")[0]
    print(f"LISTEN {listen_host}:{port} STATS {host}:{http.server_address[1]}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    http.shutdown()
    sink.stop()


class PySink:
    """The measuring sink as a child process: ``with PySink(...) as sink: sink.target``."""

    def __init__(
        self,
        *,
        per_record: str = "0",
        single_only: bool = False,
        ids: Path | None = None,
        log: Path | None = None,
    ) -> None:
        self._argv = [PYTHON, "-m", "tests.support.pysink", "-listen", "127.0.0.1:0",
                      "-stats", "127.0.0.1:0", "-per-record", per_record]  # fmt: skip
        if single_only:
            self._argv.append("-single-only")
        if ids is not None:
            self._argv += ["-ids", str(ids)]
        self._log_path = log
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None
        self._drain: threading.Thread | None = None
        self.target = ""
        self._stats_url = ""

    @property
    def pid(self) -> int:
        """The sink process's id (for CPU accounting)."""
        assert self._proc is not None
        return int(self._proc.pid)

    def __enter__(self) -> PySink:
        """Start the sink and wait for its ready line."""
        root = Path(__file__).resolve().parents[2]
        self._stderr = self._log_path.open("w") if self._log_path else None
        self._proc = subprocess.Popen(
            self._argv,
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=self._stderr or subprocess.DEVNULL,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().split()
        if len(line) != 4 or line[0] != "LISTEN":
            self.close()
            raise RuntimeError(f"sink did not start: {' '.join(line)!r}")
        self.target, self._stats_url = line[1], f"http://{line[3]}"
        # Anything the sink prints later must not fill the pipe and block it.
        self._drain = threading.Thread(target=self._proc.stdout.read, daemon=True)
        self._drain.start()
        return self

    def stats(self) -> dict[str, Any]:
        """What the sink received since the last reset."""
        with urllib.request.urlopen(f"{self._stats_url}/stats", timeout=30) as response:
            body: dict[str, Any] = json.loads(response.read())
        return body

    def reset(self) -> None:
        """Clear the counters and latency samples (the set of ids seen stays, as in the Go sink)."""
        request = urllib.request.Request(f"{self._stats_url}/reset", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=30):
            pass

    def close(self) -> None:
        """SIGTERM, SIGKILL if it does not go within 30 s; close the pipe and the log."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(30)
            if self._drain is not None:
                self._drain.join(5)
            if proc.stdout is not None:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the sink."""
        self.close()


if __name__ == "__main__":
    serve()
