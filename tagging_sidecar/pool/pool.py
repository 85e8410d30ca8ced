"""The adaptive worker pool: workers come up as the backlog grows and leave when idle.

Design (see docs/design/pool.md for the measurements behind it):

* **Threads, not asyncio or processes.** The work is blocking gRPC calls that release the GIL;
  a thread per *worker* (never per record) is cheap, and the pool stays usable from the
  synchronous Kafka poll loop. Throughput beyond one core comes from several consumer processes,
  not from this pool.
* **Slots own the queues, threads come and go.** A slot has a bounded FIFO queue and a
  dispatcher; a thread runs on a slot while it has work and leaves after ``idle_timeout`` seconds
  of nothing. Records queued to a slot survive its worker ending (``EndOfWork``): the next
  activation of the slot takes them first, in order.
* **Ordering by affinity.** An item dispatched with a key goes to the slot that already holds
  items of that key; otherwise to the least-loaded active slot. One slot processes its queue in
  order, so items of one key are delivered in dispatch order however many workers come and go.
* **Backpressure, not growth.** Each slot holds at most ``queue_size`` weight units waiting;
  ``dispatch`` blocks (or ``offer`` refuses) when the target slot is full.
* **Idle costs nothing.** Idle workers sleep on a condition variable with a timeout in seconds;
  nothing polls.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

import structlog

from tagging_sidecar.errors import PoolClosed, PoolFull
from tagging_sidecar.pool.dispatcher import Dispatcher, EndOfWork, Rejected
from tagging_sidecar.pool.policy import ScalingPolicy

R = TypeVar("R")

Clock = Callable[[], float]
DoneCallback = Callable[[Sequence[R], Sequence[Rejected[R]]], None]

_log = structlog.get_logger("tagging_sidecar.pool")


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A consistent snapshot of the pool, for metrics and tests."""

    active_workers: int
    wanted_workers: int
    backlog: int
    in_process: int
    scale_ups: int
    scale_downs: int
    before_failures: int


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


class WorkerPool(Generic[R]):
    """Items in, batches out to per-worker dispatchers; results through ``on_done``.

    ``dispatcher_factory`` is called once per slot (the seed's one dispatcher per worker).
    ``on_done(items, rejected)`` runs on the worker thread after each batch; ``rejected`` lists
    the items the dispatcher gave up on. ``max_batch`` caps the weight of one batch; a worker
    with less than that waits up to ``linger`` seconds for more before it processes.
    """

    def __init__(
        self,
        dispatcher_factory: Callable[[], Dispatcher[R]],
        on_done: DoneCallback[R],
        policy: ScalingPolicy | None = None,
        *,
        max_batch: int | None = None,
        clock: Clock = time.monotonic,
        before_backoff: tuple[float, float] = (0.1, 10.0),
        name: str = "pool",
        linger: float = 0.0,
    ) -> None:
        self._policy = policy or ScalingPolicy()
        self._factory = dispatcher_factory
        self._on_done = on_done
        self._max_batch = max_batch or self._policy.queue_size
        self._clock = clock
        self._backoff = before_backoff
        self._name = name
        self._linger = linger
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._quiet = threading.Condition(self._lock)
        self._slots: list[_Slot[R]] = []
        self._affinity: dict[Hashable, _Hold] = {}
        self._active = 0
        self._backlog = 0
        self._in_process = 0
        self._scale_ups = 0
        self._scale_downs = 0
        self._before_failures = 0
        self._started = False
        self._closed = False
        self._halted = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Create the slots and start ``min_workers`` workers."""
        with self._lock:
            if self._started:
                return
            self._started = True
            self._slots = [
                _Slot(i, self._factory(), self._lock) for i in range(self._policy.max_workers)
            ]
            for _ in range(self._policy.min_workers):
                self._activate_locked(reason="min_workers")

    def stop(self, drain: bool = True, timeout: float | None = None) -> list[R]:
        """Stop taking items; with ``drain`` wait until everything accepted is processed.

        Returns the items that were accepted but never handed to a dispatcher (empty after a
        complete drain). Items being processed when the timeout expires finish on their own.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._closed = True
            self._space.notify_all()
            if drain:
                while self._backlog or self._in_process:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    self._quiet.wait(remaining)
            self._halted = True
            leftovers: list[R] = []
            for slot in self._slots:
                while slot.queue:
                    entry = slot.queue.popleft()
                    leftovers.append(entry.item)
                    self._release_locked(entry)
                slot.queued_weight = 0
                slot.wakeup.notify_all()
            self._backlog = 0
            threads = [s.thread for s in self._slots if s.thread is not None]
        for thread in threads:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
        return leftovers

    # -- dispatch --------------------------------------------------------------------------

    def dispatch(
        self, item: R, key: Hashable | None = None, weight: int = 1, timeout: float | None = None
    ) -> None:
        """Queue ``item``; block while the pool is full. Raises PoolFull or PoolClosed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                slot = self._route_locked(key, weight)
                if slot is not None:
                    self._enqueue_locked(slot, item, key, weight)
                    return
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise PoolFull(f"{self._name}: no room for the item within {timeout} s")
                self._space.wait(remaining)

    def offer(self, item: R, key: Hashable | None = None, weight: int = 1) -> bool:
        """Queue ``item`` if there is room now; return False instead of blocking."""
        with self._lock:
            slot = self._route_locked(key, weight)
            if slot is None:
                return False
            self._enqueue_locked(slot, item, key, weight)
            return True

    def withdraw(self, predicate: Callable[[R], bool]) -> list[R]:
        """Take back every queued item (not yet handed to a dispatcher) that ``predicate``
        selects, in queue order; items being processed are not touched."""
        taken: list[R] = []
        with self._lock:
            for slot in self._slots:
                kept: deque[_Entry[R]] = deque()
                for entry in slot.queue:
                    if predicate(entry.item):
                        taken.append(entry.item)
                        slot.queued_weight -= entry.weight
                        self._backlog -= entry.weight
                        self._release_locked(entry)
                    else:
                        kept.append(entry)
                slot.queue = kept
            if taken:
                self._space.notify_all()
                if not self._backlog and not self._in_process:
                    self._quiet.notify_all()
        return taken

    def wait_for_space(self, timeout: float) -> None:
        """Sleep until some work completes or ``timeout`` passes (for callers of ``offer``)."""
        with self._lock:
            self._space.wait(timeout)

    def stats(self) -> PoolStats:
        """A snapshot of the pool's state."""
        with self._lock:
            return PoolStats(
                active_workers=self._active,
                wanted_workers=self._policy.wanted(self._backlog),
                backlog=self._backlog,
                in_process=self._in_process,
                scale_ups=self._scale_ups,
                scale_downs=self._scale_downs,
                before_failures=self._before_failures,
            )

    def maintain(self) -> None:
        """Wake idle workers so they re-check their idle time (useful with an injected clock)."""
        with self._lock:
            for slot in self._slots:
                if slot.active:
                    slot.wakeup.notify()

    # -- internals (the lock is held where the name ends in _locked) ------------------------

    def _route_locked(self, key: Hashable | None, weight: int) -> _Slot[R] | None:
        if self._closed:
            raise PoolClosed(f"{self._name} is stopped")
        if not self._started:
            raise PoolClosed(f"{self._name} is not started")
        limit = self._policy.queue_size
        if key is not None:
            held = self._affinity.get(key)
            if held is not None:
                slot = cast(_Slot[R], held.slot)
                return slot if self._fits(slot, weight, limit) else None
        best: _Slot[R] | None = None
        for slot in self._slots:
            usable = slot.active and not slot.leaving and self._fits(slot, weight, limit)
            if usable and (best is None or slot.load < best.load):
                best = slot
                if slot.load == 0:
                    break
        if best is None or best.load > 0:
            wanted = self._policy.wanted(self._backlog + weight)
            if self._active < wanted:
                fresh = self._activate_locked(
                    reason=f"backlog {self._backlog + weight} wants {wanted} workers"
                )
                if fresh is not None:
                    return fresh
        return best

    @staticmethod
    def _fits(slot: _Slot[R], weight: int, limit: int) -> bool:
        # An item heavier than the limit is still taken by an empty slot, or it could never run.
        return slot.queued_weight == 0 or slot.queued_weight + weight <= limit

    def _enqueue_locked(self, slot: _Slot[R], item: R, key: Hashable | None, weight: int) -> None:
        slot.queue.append(_Entry(item, key, weight))
        slot.queued_weight += weight
        self._backlog += weight
        if key is not None:
            held = self._affinity.get(key)
            if held is None:
                self._affinity[key] = _Hold(cast(_Slot[object], slot), weight)
            else:
                held.weight += weight
        slot.wakeup.notify()

    def _release_locked(self, entry: _Entry[R]) -> None:
        if entry.key is None:
            return
        held = self._affinity.get(entry.key)
        if held is None:
            return
        held.weight -= entry.weight
        if held.weight <= 0:
            del self._affinity[entry.key]

    def _activate_locked(self, reason: str) -> _Slot[R] | None:
        if self._halted:
            return None
        for slot in self._slots:
            if not slot.active:
                self._start_thread_locked(slot)
                self._scale_ups += 1
                _log.info(
                    "worker started",
                    pool=self._name,
                    worker=slot.index,
                    active=self._active,
                    reason=reason,
                )
                return slot
        return None

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
