"""What a worker thread does: take batches from its slot, process them, report, retire.

Split from :mod:`tagging_sidecar.pool.pool` so that the dispatch side (routing, backpressure,
scaling up) and the worker side (batching, idling, retiring) each read on their own. Both
work on the same state under the pool's one lock; names ending in ``_locked`` need it held.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar, cast

import structlog

from tagging_sidecar.pool.dispatcher import Dispatcher, EndOfWork, Rejected
from tagging_sidecar.pool.limit import CallLimit
from tagging_sidecar.pool.policy import ScalingPolicy

R = TypeVar("R")

Clock = Callable[[], float]
DoneCallback = Callable[[Sequence[R], Sequence[Rejected[R]]], None]

_log = structlog.get_logger("tagging_sidecar.pool")

# A worker lingers for more only while its queue holds fewer than this many weight units: below
# it a call's fixed cost dominates; above it what waits is worth a call at once.
LINGER_BELOW = 128

# The least weight worth a call of its own when a worker shares what its queue holds with idle
# workers (adaptive scaling): smaller parts would cost more in calls than they gain.
SPLIT_MIN = 64

# Marks the group of a keyless entry; no caller's key can contain it.
_KEYLESS = object()


@dataclass(slots=True)
class _Entry(Generic[R]):
    item: R
    key: Hashable | None
    weight: int
    #: when it was queued (a reading of the pool's clock): the linger counts from there
    queued_at: float = 0.0


@dataclass(slots=True)
class _Hold:
    """Which slot holds items of one key, and how much weight of them."""

    slot: _Slot[object]
    weight: int


class _Awaits(Enum):
    """What a worker blocked on its slot's condition waits for: an arrival wakes it only when
    the arrival changes that (a wake costs a thread switch and the interpreter lock)."""

    #: running, or waiting for its turn at a call or a retry's backoff
    NOTHING = "nothing"
    #: an empty queue: any arrival
    WORK = "work"
    #: lingering: an arrival that makes the queue worth a call
    ENOUGH = "enough"


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
        #: when the batch in process was taken (the pool's clock)
        self.taken_at = 0.0
        self.awaits = _Awaits.NOTHING

    @property
    def load(self) -> int:
        return self.queued_weight + self.in_process


class SlotWorkers(Generic[R]):
    """The worker side of :class:`~tagging_sidecar.pool.WorkerPool` (its base class)."""

    _policy: ScalingPolicy
    _limiter: CallLimit | None
    _on_done: DoneCallback[R]
    _max_batch: int
    _slots: list[_Slot[R]]
    _permit_line: deque[_Slot[R]]
    _calls: int
    _clock: Clock
    _backoff: tuple[float, float]
    _name: str
    _linger: float
    _quick_call: float
    _last_call_quick: bool
    _lock: threading.Lock
    _space: threading.Condition
    _quiet: threading.Condition
    _affinity: dict[Hashable, _Hold]
    _active: int
    _backlog: int
    _last_refusal: float
    _in_process: int
    _scale_ups: int
    _scale_downs: int
    _before_failures: int
    _halted: bool

    def _activate_locked(self, reason: str) -> _Slot[R] | None:
        raise NotImplementedError  # the dispatch side starts workers

    def _target_locked(self) -> int:
        """Workers the adaptive limit calls for (never below ``min_workers``)."""
        assert self._limiter is not None
        policy = self._policy
        return max(policy.min_workers, min(policy.max_workers, self._limiter.limit))

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
        batch: list[_Entry[R]] | None = None
        while True:
            if batch is None:
                batch = self._next_batch(slot)
            if batch is None:
                reason = "idle" if not self._halted else "stopped"
                break
            items = [entry.item for entry in batch]
            weight = sum(entry.weight for entry in batch)
            log.debug("worker processing", items=len(items), weight=weight)
            failed = False
            started = time.monotonic()
            try:
                rejected: Sequence[Rejected[R]] = slot.dispatcher.process(items)
            except EndOfWork:
                self._requeue(slot, batch, weight)
                reason = "dispatcher ended the worker"
                break
            except Exception as exc:  # noqa: BLE001 - a dispatcher error must never kill the pool
                log.warning("batch failed", error=type(exc).__name__, items=len(items))
                rejected = [Rejected(item, exc) for item in items]
                failed = True
            # The next batch, if one is ready, is taken before the results are reported: whoever
            # waits for results to refill the queue then finds room in it.
            batch = self._complete(slot, batch, weight, time.monotonic() - started, failed)
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
        with self._lock:
            while True:
                if not self._await_work_locked(slot):
                    return None
                if self._limiter is None:
                    self._linger_locked(slot)
                    return self._take_prefix_locked(slot)
                # The wait for a call to be free is time records spend gathering anyway, so
                # the linger comes after it and counts from the oldest record's arrival.
                if not self._await_permit_locked(slot):
                    return None
                self._linger_locked(slot)
                if slot.queue:
                    batch = self._take_share_locked(slot)
                    self._grant_locked()
                    return batch
                # Withdrawn while this worker waited for its turn: wait for work again.
                self._grant_locked()

    def _await_work_locked(self, slot: _Slot[R]) -> bool:
        policy = self._policy
        while not slot.queue:
            if self._halted:
                return False
            idle_for = self._clock() - slot.idle_since
            surplus = self._limiter is not None and self._active > self._target_locked()
            if surplus or policy.may_retire(idle_for, self._active):
                # Adaptive scaling: the limit came down, so an idle worker above it leaves now.
                slot.leaving = True
                return False
            remaining = policy.idle_timeout - idle_for
            slot.awaits = _Awaits.WORK
            slot.wakeup.wait(remaining if remaining > 0 else policy.idle_timeout)
            slot.awaits = _Awaits.NOTHING
        return True

    def _linger_locked(self, slot: _Slot[R]) -> None:
        """Wait while little is queued, until the oldest entry has waited ``linger``."""
        if not self._lingers(slot):
            return
        # A trickle would otherwise make one call per record: wait briefly for more.
        deadline = slot.queue[0].queued_at + self._linger
        slot.awaits = _Awaits.ENOUGH
        while self._lingers(slot) and not self._halted:
            left = deadline - self._clock()
            if left <= 0 or not slot.wakeup.wait(left):
                break
        slot.awaits = _Awaits.NOTHING

    def _arrived_locked(self, slot: _Slot[R]) -> None:
        """Wake ``slot``'s worker for what was just queued, if it waits for that."""
        # At moderate rates items arrive a record or two at a time: waking a lingering worker
        # for each, only for it to find too little and wait again, is a thread switch apiece.
        awaits = slot.awaits
        if awaits is _Awaits.WORK or (awaits is _Awaits.ENOUGH and not self._lingers(slot)):
            slot.wakeup.notify()

    def _lingers(self, slot: _Slot[R]) -> bool:
        """Whether ``slot`` holds too little to be worth a call before its linger is over."""
        below = min(self._max_batch, LINGER_BELOW)
        return bool(self._linger and slot.queue and slot.queued_weight < below)

    def _await_permit_locked(self, slot: _Slot[R]) -> bool:
        """Wait in line until a call may start (adaptive scaling); False when stopped."""
        limiter = self._limiter
        assert limiter is not None
        line = self._permit_line
        line.append(slot)
        while not self._halted and not (line[0] is slot and self._calls < limiter.limit):
            slot.wakeup.wait()
        line.remove(slot)
        return not self._halted

    def _grant_locked(self) -> None:
        """Wake the worker first in line if a call may start."""
        limiter = self._limiter
        if limiter is not None and self._permit_line and self._calls < limiter.limit:
            self._permit_line[0].wakeup.notify()

    def _take_prefix_locked(self, slot: _Slot[R]) -> list[_Entry[R]]:
        batch: list[_Entry[R]] = []
        weight = 0
        while slot.queue and (not batch or weight + slot.queue[0].weight <= self._max_batch):
            entry = slot.queue.popleft()
            batch.append(entry)
            weight += entry.weight
        self._taken_locked(slot, weight)
        return batch

    def _take_share_locked(self, slot: _Slot[R]) -> list[_Entry[R]]:
        """Take this worker's share of its queue; hand the rest to idle workers.

        Without idle workers (or calls to spare) the worker takes what its queue holds, up to
        ``max_batch``. With them, the queue is split by key: this worker keeps keys, in order of
        first appearance, until their queued weight reaches its share, and the other keys go,
        whole, to the idle workers. Several calls then run at once while every key stays on
        one worker, in order.
        """
        helpers = self._idle_helpers_locked(slot)
        parts = min(len(helpers) + 1, slot.queued_weight // SPLIT_MIN)
        if parts < 2:
            return self._take_keys_locked(slot, None)
        share = math.ceil(slot.queued_weight / parts)
        groups = self._groups(slot.queue)
        mine: set[Hashable] = set()
        weight = 0
        for group, entries in groups.items():
            if weight >= share:
                break
            mine.add(group)
            weight += sum(entry.weight for entry in entries)
        batch = self._take_keys_locked(slot, mine)
        self._hand_over_locked(slot, groups, mine, helpers[: parts - 1])
        return batch

    @staticmethod
    def _group(entry: _Entry[R]) -> Hashable:
        """What must stay together and in order: the key; a keyless entry is its own group."""
        return entry.key if entry.key is not None else (_KEYLESS, id(entry))

    @classmethod
    def _groups(cls, queue: deque[_Entry[R]]) -> dict[Hashable, list[_Entry[R]]]:
        """The queue's entries by group, in order of first appearance."""
        groups: dict[Hashable, list[_Entry[R]]] = {}
        for entry in queue:
            groups.setdefault(cls._group(entry), []).append(entry)
        return groups

    def _take_keys_locked(self, slot: _Slot[R], mine: set[Hashable] | None) -> list[_Entry[R]]:
        """Take entries in queue order (of the groups in ``mine``, or any) up to ``max_batch``."""
        batch: list[_Entry[R]] = []
        kept: deque[_Entry[R]] = deque()
        stopped: set[Hashable] = set()
        weight = 0
        for entry in slot.queue:
            group = self._group(entry)
            if (mine is not None and group not in mine) or group in stopped:
                kept.append(entry)
            elif batch and weight + entry.weight > self._max_batch:
                kept.append(entry)
                stopped.add(group)  # every later entry of this key stays behind it
            else:
                batch.append(entry)
                weight += entry.weight
        slot.queue = kept
        self._taken_locked(slot, weight)
        return batch

    def _idle_helpers_locked(self, slot: _Slot[R]) -> list[_Slot[R]]:
        assert self._limiter is not None
        # Calls still allowed besides this worker's own and those of workers waiting in line.
        spare = self._limiter.limit - self._calls - 1 - len(self._permit_line)
        if spare <= 0:
            return []
        idle = [
            other
            for other in self._slots
            if other is not slot
            and other.active
            and not other.leaving
            and not other.queue
            and not other.in_process
        ]
        return idle[:spare]

    def _hand_over_locked(
        self,
        slot: _Slot[R],
        groups: dict[Hashable, list[_Entry[R]]],
        mine: set[Hashable],
        helpers: list[_Slot[R]],
    ) -> None:
        """Move the groups not in ``mine``, whole, from ``slot`` to ``helpers``, balanced."""
        loads = dict.fromkeys(range(len(helpers)), 0)
        moved = 0
        for group, entries in groups.items():
            if group in mine:
                continue
            index = min(loads, key=loads.__getitem__)
            target = helpers[index]
            weight = sum(entry.weight for entry in entries)
            target.queue.extend(entries)
            target.queued_weight += weight
            loads[index] += weight
            moved += weight
            held = self._affinity.get(group)
            if held is not None:
                held.slot = cast(_Slot[object], target)
        if not moved:
            return
        slot.queue = deque(entry for entry in slot.queue if self._group(entry) in mine)
        slot.queued_weight -= moved
        for index, helper in enumerate(helpers):
            if loads[index]:
                helper.wakeup.notify()

    def _taken_locked(self, slot: _Slot[R], weight: int) -> None:
        slot.queued_weight -= weight
        slot.in_process = weight
        slot.taken_at = self._clock()
        self._backlog -= weight
        self._in_process += weight
        self._calls += 1
        self._space.notify_all()  # the lane has room again

    def _take_ready_locked(self, slot: _Slot[R]) -> list[_Entry[R]] | None:
        """The next batch if it needs no waiting: records queued, enough of them not to
        linger, and (with a limit) a call free with no other worker in line for it."""
        if self._halted or not slot.queue:
            return None
        if self._lingers(slot) and self._clock() - slot.queue[0].queued_at < self._linger:
            return None
        if self._limiter is None:
            return self._take_prefix_locked(slot)
        if self._permit_line or self._calls >= self._limiter.limit:
            return None
        batch = self._take_share_locked(slot)
        self._grant_locked()
        return batch

    def _complete(
        self, slot: _Slot[R], batch: list[_Entry[R]], weight: int, seconds: float, failed: bool
    ) -> list[_Entry[R]] | None:
        """Account a finished batch; return the next one if it can be taken without waiting."""
        with self._lock:
            for entry in batch:
                self._release_locked(entry)
            slot.in_process = 0
            slot.idle_since = self._clock()
            # Work waited for this call's limit only if some found no room while it ran:
            # records merely queued behind a call are what the next batch carries.
            waiting = self._last_refusal >= slot.taken_at
            self._call_done_locked(weight, seconds, failed, waiting, worker=slot.index)
            return self._take_ready_locked(slot)

    def _call_done_locked(
        self, weight: int, seconds: float, failed: bool, waiting: bool, worker: int | None
    ) -> None:
        """Account a finished call of ``weight`` (a worker's, or the caller's: ``worker`` None)."""
        self._in_process -= weight
        self._calls -= 1
        self._last_call_quick = not failed and seconds <= self._quick_call
        if self._limiter is not None:
            self._feed_limiter_locked(weight, seconds, failed, waiting, worker)
        self._space.notify_all()
        if not self._backlog and not self._in_process:
            self._quiet.notify_all()

    def _feed_limiter_locked(
        self, weight: int, seconds: float, failed: bool, waiting: bool, worker: int | None
    ) -> None:
        assert self._limiter is not None
        change = self._limiter.on_call(weight, seconds, failed, self._calls + 1, waiting)
        if change is not None:
            _log.debug(
                "call limit changed",
                pool=self._name,
                worker=worker,
                old=change.old,
                new=change.new,
                reason=change.reason,
            )
        self._grant_locked()
        if self._backlog and self._active < self._target_locked():
            # More calls are allowed and work waits: a fresh worker takes a share of it.
            self._activate_locked(reason=f"call limit {self._limiter.limit}")

    def _requeue(self, slot: _Slot[R], batch: list[_Entry[R]], weight: int) -> None:
        with self._lock:
            slot.queue.extendleft(reversed(batch))
            slot.queued_weight += weight
            slot.in_process = 0
            self._in_process -= weight
            self._backlog += weight
            self._calls -= 1
            self._grant_locked()

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
