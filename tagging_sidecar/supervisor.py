"""``TAGGING_PROCESSES > 1``: several consumers of the same group inside one sidecar.

One Python process saturates one core (the GIL); each child process here is a complete sidecar
(consumer, pool, forwarder) in the same consumer group, so Kafka spreads the partitions over
them. The sidecar is still one endpoint: the parent serves ``/livez``, ``/readyz`` and
``/metrics`` on ``TAGGING_HTTP__PORT`` for all children (see :mod:`.observe.aggregate`); each
child serves its own only on a loopback port that the parent reads.

Each child's poll loop stamps a heartbeat in shared memory. A child that stops stamping for
longer than the liveness limit is wedged: the parent kills it and starts a new one in its
place. Offsets are only ever committed after delivery, so the records it held are read again
(at least once). A child that exits with an error stops the others, and the sidecar exits
non-zero so that the orchestrator restarts it, with its own backoff.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess

import structlog
from prometheus_client import CollectorRegistry, Counter, ProcessCollector

from tagging_sidecar.config import Settings
from tagging_sidecar.errors import SidecarError
from tagging_sidecar.observe.aggregate import Child, ChildrenMetrics, ChildrenProbes
from tagging_sidecar.observe.health import HealthServer, HealthState, tick_timeout
from tagging_sidecar.observe.metrics import NAMESPACE

_log = structlog.get_logger("tagging_sidecar.supervisor")

#: seconds a wedged child gets to exit on SIGTERM before it is killed
KILL_AFTER = 5.0


@dataclass
class ChildLink:
    """Shared memory between the parent and one child: the child's heartbeat (monotonic
    seconds of its poll loop's last pass) and its loopback HTTP port (0 until it serves)."""

    heartbeat: ctypes.c_double
    port: ctypes.c_int


def child_main(settings: Settings, index: int, link: ChildLink) -> None:
    """Body of child ``index``: one sidecar, its probes and metrics on a loopback port."""
    from tagging_sidecar import runtime
    from tagging_sidecar.app import Sidecar
    from tagging_sidecar.observe.logs import configure_logging

    runtime.tune_process()
    configure_logging(settings.log.format, settings.log.level)
    structlog.contextvars.bind_contextvars(process=index)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into SIGTERM
    sidecar = Sidecar(settings, stop_event=stop, serve_http=False)
    sidecar.health.heartbeat = link.heartbeat
    sidecar.health.tick()
    http = HealthServer("127.0.0.1", 0, sidecar.health, sidecar.metrics.registry)
    http.start()
    link.port.value = http.port
    try:
        sidecar.run()
    except SidecarError as exc:
        _log.error("sidecar process failed", error=str(exc))
        raise SystemExit(1) from None
    finally:
        http.stop()


ChildMain = Callable[[Settings, int, ChildLink], None]


class _Slot:
    """Child ``index`` and its current process (replaced when it is restarted)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.name = f"process {index}"
        self.process: BaseProcess | None = None
        self.link: ChildLink | None = None

    def view(self) -> Child:
        alive = self.process is not None and self.process.exitcode is None
        port = self.link.port.value if self.link is not None and alive else 0
        return Child(self.name, port or None)


class Supervisor:
    """Runs ``settings.processes`` children and serves their one endpoint.

    ``child`` and ``heartbeat_timeout`` exist for tests (a child that wedges on purpose, a
    shorter limit); by default the limit is the children's own liveness limit.
    """

    def __init__(
        self,
        settings: Settings,
        child: ChildMain = child_main,
        heartbeat_timeout: float | None = None,
    ) -> None:
        self.settings = settings
        self._child = child
        self._timeout = heartbeat_timeout or tick_timeout(settings.shutdown.grace_period)
        self._context = multiprocessing.get_context("spawn")
        self._child_settings = settings.model_copy(
            update={
                "processes": 1,
                "http": settings.http.model_copy(update={"host": "127.0.0.1", "port": 0}),
            }
        )
        self._slots = [_Slot(i) for i in range(settings.processes)]
        self.health = HealthState(stall_timeout=0, tick_timeout=self._timeout)
        registry = CollectorRegistry()
        ProcessCollector(namespace=NAMESPACE, registry=registry)
        self.restarts = Counter(
            "process_restarts",
            "Sidecar processes restarted because their poll loop stopped.",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.metrics = ChildrenMetrics(self.children, registry)
        self._registry = CollectorRegistry()
        self._registry.register(self.metrics)
        self.http_port: int | None = None

    def children(self) -> Sequence[Child]:
        """Every child: its name and loopback port (None while it is not serving)."""
        return [slot.view() for slot in self._slots]

    def _start(self, slot: _Slot) -> None:
        heartbeat = self._context.RawValue(ctypes.c_double, time.monotonic())
        port = self._context.RawValue(ctypes.c_int, 0)
        slot.link = ChildLink(heartbeat, port)
        slot.process = self._context.Process(
            target=self._child,
            args=(self._child_settings, slot.index, slot.link),
            name=f"tagging-sidecar-{slot.index}",
        )
        slot.process.start()

    def _restart(self, slot: _Slot, silent_for: float) -> None:
        process = slot.process
        assert process is not None
        _log.error(
            "sidecar process stopped polling; restarting it",
            process=slot.index,
            pid=process.pid,
            silent_for=round(silent_for, 1),
        )
        self.metrics.retire(slot.view())
        process.terminate()
        process.join(KILL_AFTER)
        if process.exitcode is None:
            process.kill()
            process.join()
        self.restarts.inc()
        self._start(slot)

    def run(self, stop: threading.Event) -> int:
        """Run the children until ``stop`` is set; return the exit status."""
        s = self.settings
        try:
            http = HealthServer(
                s.http.host,
                s.http.port,
                ChildrenProbes(self.children, self.health.live),
                self._registry,
            )
        except OSError as exc:
            _log.error(
                "cannot serve /livez, /readyz and /metrics",
                host=s.http.host,
                port=s.http.port,
                error=exc.strerror,
            )
            return 1
        http.start()
        self.http_port = http.port
        for slot in self._slots:
            self._start(slot)
        _log.info("sidecar processes started", processes=len(self._slots), port=http.port)
        try:
            return self._supervise(stop)
        finally:
            http.stop()

    def _supervise(self, stop: threading.Event) -> int:
        failed = False
        while not stop.wait(0.5):
            self.health.tick()
            current = [slot.process for slot in self._slots]
            if any(p is not None and p.exitcode not in (None, 0) for p in current):
                failed = True
                _log.error("a sidecar process failed; stopping the others")
                break
            if all(p is not None and p.exitcode is not None for p in current):
                break
            now = time.monotonic()
            for slot in self._slots:
                assert slot.link is not None and slot.process is not None
                silent_for = now - slot.link.heartbeat.value
                if slot.process.exitcode is None and silent_for > self._timeout:
                    self._restart(slot, silent_for)
        processes = [p for slot in self._slots if (p := slot.process) is not None]
        for process in processes:
            if process.exitcode is None and process.pid is not None:
                process.terminate()  # SIGTERM: the child drains and commits
        for process in processes:
            process.join(self.settings.shutdown.grace_period + 15)
            if process.exitcode is None:
                process.kill()
                process.join()
                failed = True
        return 1 if failed or any(p.exitcode != 0 for p in processes) else 0


def run_processes(settings: Settings, stop: threading.Event) -> int:
    """Run ``settings.processes`` sidecars until ``stop`` is set; return the exit status."""
    return Supervisor(settings).run(stop)
