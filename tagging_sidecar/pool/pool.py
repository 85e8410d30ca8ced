"""The adaptive worker pool: workers come up as the backlog grows and leave when idle.

Design (see docs/design/pool.md for the measurements behind it; the worker side is in
:mod:`tagging_sidecar.pool.worker`):

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
* **No hand-off when one call keeps up.** ``call_here`` makes the call on the caller's thread
  while the pool is idle under a limit of one and calls are quick; a call that fails there
  is handed back to the caller, whose later offers go to the workers.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

import structlog

from tagging_sidecar.errors import PoolClosed, PoolFull
from tagging_sidecar.pool.dispatcher import Dispatcher
from tagging_sidecar.pool.limit import CallLimit
from tagging_sidecar.pool.policy import ScalingPolicy
from tagging_sidecar.pool.worker import (
    Clock,
    DoneCallback,
    SlotWorkers,
    _Awaits,
    _Entry,
    _Hold,
    _Slot,
)

R = TypeVar("R")

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
    calls_in_flight: int = 0
    call_limit: int = 0


class WorkerPool(SlotWorkers[R]):
    """Items in, batches out to per-worker dispatchers; results through ``on_done``.

    ``dispatcher_factory`` is called once per slot (the seed's one dispatcher per worker).
    ``on_done(items, rejected)`` runs on the worker thread after each batch; ``rejected`` lists
    the items the dispatcher gave up on. ``max_batch`` caps the weight of one batch; a worker
    with little waiting (less than ``LINGER_BELOW``, or ``max_batch`` if smaller) waits for more
    until its oldest item has waited ``linger`` seconds (under a limiter, counting the wait for
    a free call).

    Without ``limiter`` workers follow ``policy`` (the seed's backlog rule) and each slot holds
    ``queue_size`` weight. With an :class:`~tagging_sidecar.pool.limit.AdaptiveLimit`, calls
    in flight never exceed its limit, workers follow the limit, a slot holds up to
    ``max(queue_size, max_batch)`` and a worker shares its queue with idle workers when more
    calls are allowed (see :mod:`tagging_sidecar.pool.limit`).

    ``caller``: a dispatcher for :meth:`call_here`, which makes one call on the caller's own
    thread while the pool is idle and calls are quick (no longer than ``quick_call`` seconds).
    It should make a single attempt: a batch it fails is handed back to the caller, to be
    offered to the workers, which retry it.
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
        limiter: CallLimit | None = None,
        caller: Dispatcher[R] | None = None,
        quick_call: float = 0.05,
    ) -> None:
        self._policy = policy or ScalingPolicy()
        self._limiter = limiter
        self._factory = dispatcher_factory
        self._on_done = on_done
        self._max_batch = max_batch or self._policy.queue_size
        self._capacity = self._policy.queue_size
        if limiter is not None:
            # The batch is what the lane holds: a lane must be able to hold a whole batch.
            self._capacity = max(self._capacity, self._max_batch)
        self._permit_line: deque[_Slot[R]] = deque()
        self._calls = 0
        self._clock = clock
        self._backoff = before_backoff
        self._name = name
        self._linger = linger
        self._caller = caller
        self._caller_ready = False
        self._quick_call = quick_call
        #: whether the last call succeeded within ``quick_call``: only then may the caller's
        #: thread make one (it must not be held by a slow or failing downstream)
        self._last_call_quick = False
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._quiet = threading.Condition(self._lock)
        self._slots: list[_Slot[R]] = []
        self._affinity: dict[Hashable, _Hold] = {}
        self._active = 0
        self._backlog = 0
        #: when an item last found no room (the pool's clock): calls that ran across it were
        #: not enough for the work offered
        self._last_refusal = -math.inf
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
        if self._caller is not None and self._caller_ready:
            self._caller_ready = False
            try:
                self._caller.after()
            except Exception as exc:  # noqa: BLE001 - closing errors are logged, not fatal
                _log.warning("caller's dispatcher cleanup failed", pool=self._name, error=str(exc))
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
                self._last_refusal = self._clock()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise PoolFull(f"{self._name}: no room for the item within {timeout} s")
                self._space.wait(remaining)

    def offer(
        self, item: R, key: Hashable | None = None, weight: int = 1, waited: float = 0.0
    ) -> bool:
        """Queue ``item`` if there is room now; return False instead of blocking.

        ``waited``: seconds the item already spent gathering company before the offer; they
        count against the linger.
        """
        with self._lock:
            slot = self._route_locked(key, weight)
            if slot is None:
                self._last_refusal = self._clock()
                return False
            self._enqueue_locked(slot, item, key, weight, waited)
            return True

    def call_here(self, items: Sequence[R], weight: int) -> bool:
        """Process ``items`` (of ``weight`` units in all) as one batch on the caller's thread,
        if the pool is idle; return whether they were processed.

        Idle: nothing queued and no call in flight, the limit at one call, a worker ready and
        the last call quick. One call then keeps up with the work, and handing it to a worker
        would only add a thread switch to its latency; nothing of any key is in the pool, so
        order holds. Results go to ``on_done`` before this returns True. False means nothing
        counts as done: the pool was not idle (nothing was tried), or the call raised (it
        counts as a failed call, so calls stay with the workers until one is quick again). The
        caller then offers the items, in their order, which a worker retries like any others.
        """
        caller = self._caller
        with self._lock:
            if caller is None or not self._idle_locked(weight):
                return False
            prepare = not self._caller_ready
            self._calls += 1
            self._in_process += weight
        started = time.monotonic()
        try:
            if prepare:
                caller.before()  # quick: a worker's own ``before`` succeeded already
                self._caller_ready = True
            rejected = caller.process(items)
        except Exception as exc:  # noqa: BLE001 - the caller offers the batch to the workers
            _log.info(
                "call on the caller's thread failed; the workers retry it",
                pool=self._name,
                error=str(exc),
            )
            with self._lock:
                self._call_done_locked(weight, time.monotonic() - started, True, False, None)
            return False
        with self._lock:
            self._call_done_locked(weight, time.monotonic() - started, False, False, None)
        try:
            self._on_done(items, rejected)
        except Exception:  # noqa: BLE001 - as on a worker: a callback error must not escape
            _log.exception("on_done callback failed", pool=self._name)
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

    def holds(self, keys: Iterable[Hashable]) -> bool:
        """Whether an item of any of ``keys`` is queued or being processed (a caller that
        sends one unit's work under another key waits until this is False)."""
        with self._lock:
            affinity = self._affinity
            return any(key in affinity for key in keys)

    def wait_for_space(self, timeout: float) -> None:
        """Sleep until some work completes or ``timeout`` passes (for callers of ``offer``)."""
        with self._lock:
            self._space.wait(timeout)

    def stats(self) -> PoolStats:
        """A snapshot of the pool's state."""
        with self._lock:
            return PoolStats(
                active_workers=self._active,
                wanted_workers=self._wanted_locked(self._backlog),
                backlog=self._backlog,
                in_process=self._in_process,
                scale_ups=self._scale_ups,
                scale_downs=self._scale_downs,
                before_failures=self._before_failures,
                calls_in_flight=self._calls,
                call_limit=self._policy.max_workers if self._limiter is None else self.limit,
            )

    @property
    def limit(self) -> int:
        """Calls allowed in flight: the adaptive limit, or ``max_workers`` without one."""
        return self._policy.max_workers if self._limiter is None else self._limiter.limit

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
        limit = self._capacity
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
            wanted = self._wanted_locked(self._backlog + weight)
            if self._active < wanted:
                fresh = self._activate_locked(
                    reason=f"backlog {self._backlog + weight} wants {wanted} workers"
                )
                if fresh is not None:
                    return fresh
        return best

    def _idle_locked(self, weight: int) -> bool:
        """Whether a call of ``weight`` may run on the caller's thread (see ``call_here``)."""
        if self._closed or self._halted or self._calls or self._backlog:
            return False
        if self._limiter is None or self._limiter.limit > 1 or weight > self._max_batch:
            return False
        # A worker that is ready (its ``before`` succeeded) and idle waits on an empty queue.
        ready = any(slot.awaits is _Awaits.WORK for slot in self._slots)
        return ready and self._last_call_quick

    def _wanted_locked(self, backlog: int) -> int:
        if self._limiter is None:
            return self._policy.wanted(backlog)
        return self._target_locked() if backlog > 0 else self._policy.min_workers

    @staticmethod
    def _fits(slot: _Slot[R], weight: int, limit: int) -> bool:
        # An item heavier than the limit is still taken by an empty slot, or it could never run.
        return slot.queued_weight == 0 or slot.queued_weight + weight <= limit

    def _enqueue_locked(
        self, slot: _Slot[R], item: R, key: Hashable | None, weight: int, waited: float = 0.0
    ) -> None:
        slot.queue.append(_Entry(item, key, weight, self._clock() - waited))
        slot.queued_weight += weight
        self._backlog += weight
        if key is not None:
            held = self._affinity.get(key)
            if held is None:
                self._affinity[key] = _Hold(cast(_Slot[object], slot), weight)
            else:
                held.weight += weight
        self._arrived_locked(slot)

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
