"""What a worker thread does: take batches from its slot, process them, report, retire.

Split from :mod:`tagging_sidecar.pool.pool` so that the dispatch side (routing, backpressure,
scaling up) and the worker side (batching, idling, retiring) each read on their own. Both
work on the same state under the pool's one lock; names ending in ``_locked`` need it held.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import structlog

from tagging_sidecar.pool.dispatcher import Dispatcher, EndOfWork, Rejected
from tagging_sidecar.pool.policy import ScalingPolicy

R = TypeVar("R")

Clock = Callable[[], float]
DoneCallback = Callable[[Sequence[R], Sequence[Rejected[R]]], None]

_log = structlog.get_logger("tagging_sidecar.pool")


@dataclass(slots=True)
class _Entry(Generic[R]):
    item: R
    key: Hashable | None
    weight: int


@dataclass(slots=True)
class _Hold:
    """Which slot holds items of one key, and how much weight of them."""

    slot: _Slot[object]
    weight: int


class _Slot(Generic[R]):
    """One worker position: its queue, its dispatcher and, while active, its thread."""

    def __init__(self, index: int, dispatcher: Dispatcher[R], lock: threading.Lock) -> None:
        self.index = index
        self.dispatcher = dispatcher
        self.queue: deque[_Entry[R]] = deque()
        self.queued_weight = 0
        self.in_process = 0
        self.wakeup = threading.Condition(lock)
        self.thread: threading.Thread | None = None
        self.active = False
        self.leaving = False
        self.idle_since = 0.0

    @property
    def load(self) -> int:
        return self.queued_weight + self.in_process


class SlotWorkers(Generic[R]):
    """The worker side of :class:`~tagging_sidecar.pool.WorkerPool` (its base class)."""

    _policy: ScalingPolicy
    _on_done: DoneCallback[R]
    _max_batch: int
    _clock: Clock
    _backoff: tuple[float, float]
    _name: str
    _linger: float
    _lock: threading.Lock
    _space: threading.Condition
    _quiet: threading.Condition
    _affinity: dict[Hashable, _Hold]
    _active: int
    _backlog: int
    _in_process: int
    _scale_ups: int
    _scale_downs: int
    _before_failures: int
    _halted: bool

    def _release_locked(self, entry: _Entry[R]) -> None:
        if entry.key is None:
            return
        held = self._affinity.get(entry.key)
        if held is None:
            return
        held.weight -= entry.weight
        if held.weight <= 0:
            del self._affinity[entry.key]

    def _start_thread_locked(self, slot: _Slot[R]) -> None:
        slot.active = True
        slot.leaving = False
        slot.idle_since = self._clock()
        self._active += 1
        slot.thread = threading.Thread(
            target=self._run, args=(slot,), name=f"{self._name}-worker-{slot.index}", daemon=True
        )
        slot.thread.start()

    def _run(self, slot: _Slot[R]) -> None:
        log = _log.bind(pool=self._name, worker=slot.index)
        if not self._prepare(slot, log):
            self._finish(slot, log, prepared=False, reason="stopped before it was ready")
            return
        reason = "stopped"
        while True:
            batch = self._next_batch(slot)
            if batch is None:
                reason = "idle" if not self._halted else "stopped"
                break
            items = [entry.item for entry in batch]
            weight = sum(entry.weight for entry in batch)
            log.debug("worker processing", items=len(items), weight=weight)
            try:
                rejected: Sequence[Rejected[R]] = slot.dispatcher.process(items)
            except EndOfWork:
                self._requeue(slot, batch, weight)
                reason = "dispatcher ended the worker"
                break
            except Exception as exc:  # noqa: BLE001 - a dispatcher error must never kill the pool
                log.warning("batch failed", error=type(exc).__name__, items=len(items))
                rejected = [Rejected(item, exc) for item in items]
            self._complete(slot, batch, weight)
            try:
                self._on_done(items, rejected)
            except Exception:
                log.exception("on_done callback failed")
        self._finish(slot, log, prepared=True, reason=reason)

    def _prepare(self, slot: _Slot[R], log: structlog.typing.FilteringBoundLogger) -> bool:
        delay, ceiling = self._backoff
        while True:
            try:
                slot.dispatcher.before()
                return True
            except Exception as exc:  # noqa: BLE001 - retried; never send into a broken stream
                with self._lock:
                    self._before_failures += 1
                    log.warning("worker not ready, retrying", error=str(exc), retry_in=delay)
                    if self._halted:
                        return False
                    slot.wakeup.wait(delay)
                    if self._halted:
                        return False
                delay = min(ceiling, delay * 2)

    def _next_batch(self, slot: _Slot[R]) -> list[_Entry[R]] | None:
        policy = self._policy
        with self._lock:
            while not slot.queue:
                if self._halted:
                    return None
                idle_for = self._clock() - slot.idle_since
                if policy.may_retire(idle_for, self._active):
                    slot.leaving = True
                    return None
                remaining = policy.idle_timeout - idle_for
                slot.wakeup.wait(remaining if remaining > 0 else policy.idle_timeout)
            if self._linger and slot.queued_weight < self._max_batch:
                # A trickle would otherwise make one call per record: wait briefly for more.
                deadline = time.monotonic() + self._linger
                while slot.queued_weight < self._max_batch and not self._halted:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    slot.wakeup.wait(left)
            batch: list[_Entry[R]] = []
            weight = 0
            while slot.queue and (not batch or weight + slot.queue[0].weight <= self._max_batch):
                entry = slot.queue.popleft()
                batch.append(entry)
                weight += entry.weight
            slot.queued_weight -= weight
            slot.in_process = weight
            self._backlog -= weight
            self._in_process += weight
            return batch

    def _complete(self, slot: _Slot[R], batch: list[_Entry[R]], weight: int) -> None:
        with self._lock:
            for entry in batch:
                self._release_locked(entry)
            slot.in_process = 0
            self._in_process -= weight
            slot.idle_since = self._clock()
            self._space.notify_all()
            if not self._backlog and not self._in_process:
                self._quiet.notify_all()

    def _requeue(self, slot: _Slot[R], batch: list[_Entry[R]], weight: int) -> None:
        with self._lock:
            slot.queue.extendleft(reversed(batch))
            slot.queued_weight += weight
            slot.in_process = 0
            self._in_process -= weight
            self._backlog += weight

    def _finish(
        self,
        slot: _Slot[R],
        log: structlog.typing.FilteringBoundLogger,
        prepared: bool,
        reason: str,
    ) -> None:
        with self._lock:
            slot.leaving = True
        if prepared:
            try:
                slot.dispatcher.after()
            except Exception as exc:  # noqa: BLE001 - closing errors are logged, not fatal
                log.warning("worker cleanup failed", error=str(exc))
        with self._lock:
            slot.active = False
            slot.leaving = False
            self._active -= 1
            self._scale_downs += 1
            log.info("worker stopped", reason=reason, active=self._active)
            if slot.queue and not self._halted:
                # Records are still queued to this slot (EndOfWork): a fresh activation takes them.
                self._start_thread_locked(slot)
                self._scale_ups += 1
                log.info("worker restarted", reason="records still queued", active=self._active)
            self._space.notify_all()
            if not self._backlog and not self._in_process:
                self._quiet.notify_all()
