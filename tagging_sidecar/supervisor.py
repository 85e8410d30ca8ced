"""``TAGGING_PROCESSES > 1``: several consumers of the same group inside one sidecar.

One Python process saturates one core (the GIL); each child process here is a complete sidecar
(consumer, pool, forwarder) in the same consumer group, so Kafka spreads the partitions over
them. Child ``i`` serves its probes and metrics on ``TAGGING_HTTP__PORT + i``. If a child fails,
the others are stopped and the sidecar exits non-zero so that the orchestrator restarts it;
offsets are only ever committed after delivery, so nothing is lost either way.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading

import structlog

from tagging_sidecar.config import Settings

_log = structlog.get_logger("tagging_sidecar.supervisor")


def _child(settings: Settings, index: int) -> None:
    from tagging_sidecar.app import Sidecar
    from tagging_sidecar.errors import SidecarError
    from tagging_sidecar.observe.logs import configure_logging

    configure_logging(settings.log.format, settings.log.level)
    structlog.contextvars.bind_contextvars(process=index)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into SIGTERM
    try:
        Sidecar(settings, stop_event=stop).run()
    except SidecarError as exc:
        _log.error("sidecar process failed", error=str(exc))
        raise SystemExit(1) from None


def run_processes(settings: Settings, stop: threading.Event) -> int:
    """Run ``settings.processes`` sidecars until ``stop`` is set; return the exit status."""
    context = multiprocessing.get_context("spawn")
    children = []
    for index in range(settings.processes):
        port = settings.http.port + index if settings.http.port else 0
        child_settings = settings.model_copy(
            update={"processes": 1, "http": settings.http.model_copy(update={"port": port})}
        )
        process = context.Process(
            target=_child, args=(child_settings, index), name=f"tagging-sidecar-{index}"
        )
        process.start()
        children.append(process)
    _log.info("sidecar processes started", processes=len(children))
    failed = False
    while not stop.wait(0.5):
        if any(p.exitcode not in (None, 0) for p in children):
            failed = True
            _log.error("a sidecar process failed; stopping the others")
            break
        if all(p.exitcode is not None for p in children):
            break
    for process in children:
        if process.exitcode is None and process.pid is not None:
            process.terminate()  # SIGTERM: the child drains and commits
    for process in children:
        process.join(settings.shutdown.grace_period + 15)
        if process.exitcode is None:
            process.kill()
            process.join()
            failed = True
    return 1 if failed or any(p.exitcode != 0 for p in children) else 0
