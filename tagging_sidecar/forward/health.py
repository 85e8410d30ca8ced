"""Is the downstream able to take records? The gRPC health service when the server has one,
channel connectivity otherwise.

A connected channel only says that a TCP (or TLS) connection exists: a server that is starting,
draining or has lost its own backend answers ``NOT_SERVING`` on ``grpc.health.v1.Health/Check``
while still accepting connections. :class:`DownstreamHealth` asks that service periodically on
the client's own channel and combines its answer with the connectivity state; a server without
the health service (``UNIMPLEMENTED``) is judged by connectivity alone.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2

#: the service the sidecar calls; checked first, then the server as a whole ("")
HAVILAH_SERVICE = "tagging.v1.Havilah"
CHECK_METHOD = "/grpc.health.v1.Health/Check"
#: seconds between two health checks
CHECK_INTERVAL = 5.0

_UP_STATES = (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.IDLE)


class DownstreamHealth:
    """Combines connectivity (:meth:`on_state`) and periodic health checks (:meth:`watch`) and
    calls ``report(up, reason)`` whenever the verdict changes."""

    def __init__(
        self,
        target: str,
        report: Callable[[bool, str], None],
        interval: float = CHECK_INTERVAL,
        timeout: float = 2.0,
        services: tuple[str, ...] = (HAVILAH_SERVICE, ""),
    ) -> None:
        self._target = target
        self._report = report
        self._interval = interval
        self._timeout = timeout
        self._services = services
        self._lock = threading.Lock()
        self._connected = False
        #: the last health status name, or None when the server gives no answer (no health
        #: service, not reachable): then connectivity decides
        self._status: str | None = None
        self._last: tuple[bool, str] | None = None

    def verdict(self) -> tuple[bool, str]:
        """(whether the downstream can take records, why not)."""
        with self._lock:
            connected, status = self._connected, self._status
        if not connected:
            return False, f"gRPC downstream {self._target} not reachable"
        if status is not None and status != "SERVING":
            return False, f"gRPC downstream {self._target} reports {status} (grpc.health.v1)"
        return True, "ok"

    def on_state(self, state: grpc.ChannelConnectivity) -> None:
        """The channel's connectivity changed (the transport's ``on_state`` callback)."""
        with self._lock:
            self._connected = state in _UP_STATES
        self._publish()

    async def watch(self, channel: aio.Channel) -> None:
        """Check the health service every ``interval`` seconds until cancelled."""
        check = channel.unary_unary(
            CHECK_METHOD,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        while True:
            status = await self._check(check)
            with self._lock:
                self._status = status
            self._publish()
            await asyncio.sleep(self._interval)

    async def _check(self, check: aio.UnaryUnaryMultiCallable[Any, Any]) -> str | None:
        for service in self._services:
            try:
                response = await check(
                    health_pb2.HealthCheckRequest(service=service), timeout=self._timeout
                )
            except aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.NOT_FOUND:
                    continue  # this name is not registered: try the next one
                # UNIMPLEMENTED: no health service. Anything else (not connected, deadline):
                # no answer. Either way connectivity decides.
                return None
            name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            return name
        return None

    def _publish(self) -> None:
        verdict = self.verdict()
        with self._lock:
            if verdict == self._last:
                return
            self._last = verdict
        self._report(*verdict)
