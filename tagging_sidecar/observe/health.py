"""``/startupz``, ``/livez``, ``/readyz`` and ``/metrics`` on one small HTTP server.

Startup means the poll loop has made one full pass (the consumer exists and has polled once), or
the consumer has joined its group. Liveness means the poll loop is still ticking (a process that
exists but no longer polls is dead to Kafka). Readiness means the consumer is in its group, the
gRPC channel is up, and the commit watermark is not stuck.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def tick_timeout(grace_period: float) -> float:
    """Seconds without a tick after which the poll loop counts as dead: a revoke may block it
    for up to the grace period while in-flight records drain."""
    return max(15.0, grace_period + 10.0)


class Probes(Protocol):
    """What ``/livez`` and ``/readyz`` answer: (ok, reason)."""

    def live(self) -> tuple[bool, str]:
        """Liveness."""
        ...

    def ready(self) -> tuple[bool, str]:
        """Readiness."""
        ...

    def started(self) -> tuple[bool, str]:
        """Startup."""
        ...


class HealthState:
    """What the probes read; written by the poll loop and the forwarder."""

    def __init__(
        self, stall_timeout: float, tick_timeout: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._stall_timeout = stall_timeout
        self._tick_timeout = tick_timeout
        self._last_tick = clock()
        self._ticks = 0
        self._moved = clock()
        self.in_group = False
        self.downstream_up = False
        #: why the downstream is not up (set together with ``downstream_up``)
        self.downstream_reason = "gRPC downstream not reachable"
        self.halted_reason: str | None = None
        #: shared with a supervising parent process, which restarts a child that stops ticking
        self.heartbeat: ctypes.c_double | None = None

    def tick(self) -> None:
        """Called by the poll loop at the start of every pass."""
        self._last_tick = self._clock()
        if self.heartbeat is not None:
            # CLOCK_MONOTONIC is one clock for every process of the machine.
            self.heartbeat.value = time.monotonic()
        if self._ticks < 2:
            self._ticks += 1

    def started(self) -> tuple[bool, str]:
        """Whether startup is over: a second tick means the first pass (a poll included)
        finished; joining the group counts too. Stays true from then on."""
        if self._ticks >= 2 or self.in_group:
            self._ticks = 2
            return True, "ok"
        return False, "the poll loop has not completed a pass yet"

    def watermark_moved(self) -> None:
        """Called when a commit position advanced, or when nothing is in flight."""
        self._moved = self._clock()

    def stalled_for(self) -> float:
        """Seconds since the watermark last moved (0 when it is moving)."""
        return self._clock() - self._moved

    def live(self) -> tuple[bool, str]:
        """Whether the poll loop ticked recently."""
        age = self._clock() - self._last_tick
        if age > self._tick_timeout:
            return False, f"poll loop has not ticked for {age:.1f} s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        """Whether this replica is doing its job."""
        if self.halted_reason is not None:
            return False, self.halted_reason
        if not self.in_group:
            return False, "not in the consumer group yet"
        if not self.downstream_up:
            return False, self.downstream_reason
        stalled = self.stalled_for()
        if stalled > self._stall_timeout:
            return False, f"commit watermark stuck for {stalled:.0f} s"
        return True, "ok"


class HealthServer:
    """Serves the probes and metrics on ``host:port`` in a background thread."""

    def __init__(self, host: str, port: int, state: Probes, registry: CollectorRegistry):
        registry_ref = registry
        probes: dict[str, Callable[[], tuple[bool, str]]] = {
            "/startupz": state.started,
            "/livez": state.live,
            "/readyz": state.ready,
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, generate_latest(registry_ref), CONTENT_TYPE_LATEST)
                elif path in probes:
                    ok, why = probes[path]()
                    self._reply(200 if ok else 503, (why + "\n").encode(), "text/plain")
                else:
                    self._reply(404, b"not found\n", "text/plain")

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # probes every few seconds would drown the logs

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-http", daemon=True
        )

    def start(self) -> None:
        """Start serving."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
