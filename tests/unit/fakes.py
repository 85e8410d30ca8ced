"""In-memory stand-ins for unit tests: a controllable clock and a recording dispatcher."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from tagging_sidecar.pool import EndOfWork, Rejected


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """Shared state of every RecordingDispatcher of one pool."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.delivered: list[Any] = []
        self.batches: list[list[Any]] = []
        self.concurrent = 0
        self.max_concurrent = 0
        self.before_calls = 0
        self.after_calls = 0
        self.gate = threading.Event()
        self.gate.set()
        self.fail_before = 0
        self.end_every: int | None = None
        self.calls = 0
        self.raise_on: Callable[[Sequence[Any]], Exception | None] | None = None
        self.jitter = 0.0


class RecordingDispatcher:
    """Delivers into a Recorder; can block, jitter, fail ``before``, or end its worker."""

    def __init__(self, recorder: Recorder) -> None:
        self.r = recorder

    def before(self) -> None:
        with self.r.lock:
            self.r.before_calls += 1
            if self.r.fail_before > 0:
                self.r.fail_before -= 1
                raise ConnectionError("downstream not ready")

    def process(self, batch: Sequence[Any]) -> Sequence[Rejected[Any]]:
        r = self.r
        with r.lock:
            r.calls += 1
            r.concurrent += 1
            r.max_concurrent = max(r.max_concurrent, r.concurrent)
            end = r.end_every is not None and r.calls % r.end_every == 0
        try:
            r.gate.wait()
            if r.jitter:
                time.sleep(random.random() * r.jitter)
            if end:
                raise EndOfWork
            if r.raise_on is not None:
                error = r.raise_on(batch)
                if error is not None:
                    raise error
            with r.lock:
                r.delivered.extend(batch)
                r.batches.append(list(batch))
            return []
        finally:
            with r.lock:
                r.concurrent -= 1

    def after(self) -> None:
        with self.r.lock:
            self.r.after_calls += 1


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait for a condition another thread will make true; fail the test if it never does."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)
