"""The pool under an adaptive call limit: calls in flight, batch size, splitting by key."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagging_sidecar.pool import LimitChange, Rejected, ScalingPolicy, WorkerPool
from tagging_sidecar.pool.worker import LINGER_BELOW, SPLIT_MIN

from .fakes import FakeClock, wait_until

#: a linger no test waits out: a test that saw it pass would have timed out first
LINGER = 60.0


class ScriptedLimit:
    """A call limit the test sets; it records what the pool fed it."""

    def __init__(self, limit: int, script: Sequence[int] = ()) -> None:
        self.value = limit
        self.script = list(script)
        self.fed: list[tuple[int, int, bool]] = []
        #: the ``waiting`` of each call fed
        self.waits: list[bool] = []

    @property
    def limit(self) -> int:
        return self.value

    def on_call(
        self, records: int, seconds: float, failed: bool, in_flight: int, waiting: bool
    ) -> LimitChange | None:
        self.fed.append((records, in_flight, failed))
        self.waits.append(waiting)
        if self.script:
            old, self.value = self.value, self.script.pop(0)
            return LimitChange(old, self.value, "scripted")
        return None


class Gated:
    """A dispatcher whose calls block while their batch holds a held item; logs events."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared

    def before(self) -> None:
        return None

    def process(self, batch: Sequence[Any]) -> Sequence[Rejected[Any]]:
        s = self.shared
        with s.lock:
            s.concurrent += 1
            s.checks.append((s.concurrent, s.limit.limit))
            s.events.append(("start", tuple(batch)))
        for item in batch:
            gate = s.gates.get(item)
            if gate is not None:
                gate.wait()
        with s.lock:
            s.concurrent -= 1
            s.batches.append(list(batch))
            s.events.append(("end", tuple(batch)))
        if any(item in s.failing for item in batch):
            raise RuntimeError("downstream refused")
        return []

    def after(self) -> None:
        return None


class Shared:
    def __init__(self, limit: ScriptedLimit) -> None:
        self.lock = threading.Lock()
        self.limit = limit
        self.gates: dict[Any, threading.Event] = {}
        self.failing: set[Any] = set()
        self.concurrent = 0
        self.checks: list[tuple[int, int]] = []
        self.batches: list[list[Any]] = []
        self.events: list[tuple[str, tuple[Any, ...]]] = []

    def hold(self, item: Any) -> threading.Event:
        self.gates[item] = threading.Event()
        return self.gates[item]


def make(
    limit: ScriptedLimit,
    max_workers: int,
    min_workers: int = 1,
    max_batch: int = 1000,
    linger: float = 0.0,
    clock: FakeClock | None = None,
) -> tuple[WorkerPool[Any], Shared]:
    shared = Shared(limit)
    policy = ScalingPolicy(min_workers=min_workers, max_workers=max_workers, queue_size=8)
    pool: WorkerPool[Any] = WorkerPool(
        lambda: Gated(shared),
        lambda _items, _rejected: None,
        policy,
        max_batch=max_batch,
        clock=clock or FakeClock(),
        limiter=limit,
        linger=linger,
    )
    pool.start()
    return pool, shared


def test_a_record_that_waited_for_a_free_call_does_not_linger_again() -> None:
    # The linger counts from a record's arrival, and the wait for a call is part of it: a
    # record queued behind a long call goes out as soon as the call ends. (It lingered a
    # whole LINGER on top of that wait before.)
    clock = FakeClock()
    pool, shared = make(ScriptedLimit(1), max_workers=1, linger=LINGER, clock=clock)
    held = shared.hold("first")
    pool.dispatch("first", weight=LINGER_BELOW)  # enough not to linger
    wait_until(lambda: pool.stats().calls_in_flight == 1)
    pool.dispatch("second", weight=1)
    clock.advance(LINGER + 1)  # the call took longer than the linger
    held.set()
    wait_until(lambda: len(shared.batches) == 2, timeout=LINGER / 3)
    assert shared.batches == [["first"], ["second"]]
    pool.stop(drain=True, timeout=20)


def test_a_lone_record_lingers_for_company_until_enough_arrive() -> None:
    clock = FakeClock()
    pool, shared = make(ScriptedLimit(1), max_workers=1, linger=LINGER, clock=clock)
    pool.dispatch("alone", weight=1)
    pool.dispatch("company", weight=LINGER_BELOW - 1)  # together worth a call at once
    wait_until(lambda: len(shared.batches) == 1, timeout=LINGER / 3)
    assert shared.batches == [["alone", "company"]]
    pool.stop(drain=True, timeout=20)


def test_an_item_that_gathered_company_before_it_was_offered_does_not_linger_again() -> None:
    # Records the consumer gathered for a linger's time have lingered: holding them for a
    # second linger in the pool would double their wait.
    pool, shared = make(ScriptedLimit(1), max_workers=1, linger=LINGER)
    assert pool.offer("gathered", weight=1, waited=LINGER)
    wait_until(lambda: len(shared.batches) == 1, timeout=LINGER / 3)
    assert shared.batches == [["gathered"]]
    pool.stop(drain=True, timeout=20)


class CountingCondition(threading.Condition):
    """A condition that logs each wait with a timeout: the timeout, and whether a notify ended
    it (None while it lasts; CPython's conditions never wake without one)."""

    log: ClassVar[list[tuple[float, bool | None]]] = []

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is None:
            return super().wait()
        entry = len(self.log)
        self.log.append((timeout, None))
        notified = super().wait(timeout)
        self.log[entry] = (timeout, notified)
        return notified


def test_a_lingering_worker_is_woken_only_once_its_queue_is_worth_a_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every arrival woke the lingering worker, which found too little and waited again: at
    # moderate rates a thread switch and the interpreter lock per chunk of a record or two.
    monkeypatch.setattr(threading, "Condition", CountingCondition)
    log: list[tuple[float, bool | None]] = []
    monkeypatch.setattr(CountingCondition, "log", log)
    pool, shared = make(ScriptedLimit(1), max_workers=1, linger=LINGER)

    def lingers() -> list[bool | None]:
        return [notified for timeout, notified in log if timeout == LINGER]

    pool.dispatch("alone", weight=1)
    wait_until(lambda: len(lingers()) == 1)
    for index in range(5):
        waits = len(lingers())
        pool.dispatch(f"more-{index}", weight=1)
        # A worker woken by it would wait again at once: give it the chance to show.
        quiet_until = time.monotonic() + 0.1
        while len(lingers()) == waits and time.monotonic() < quiet_until:
            time.sleep(0.005)
    assert lingers() == [None]  # still in its first wait, never notified
    pool.dispatch("enough", weight=LINGER_BELOW - 6)
    wait_until(lambda: len(shared.batches) == 1, timeout=LINGER / 3)
    assert shared.batches == [["alone", *(f"more-{i}" for i in range(5)), "enough"]]
    assert lingers() == [True]
    pool.stop(drain=True, timeout=20)


def test_one_call_carries_everything_waiting_while_the_limit_is_one() -> None:
    limit = ScriptedLimit(1)
    pool, shared = make(limit, max_workers=4)
    held = shared.hold("first")
    pool.dispatch("first", key="a")
    wait_until(lambda: pool.stats().calls_in_flight == 1)
    items = [(f"k{i % 10}", i) for i in range(300)]
    for item in items:
        pool.dispatch(item, key=item[0])
    # The queue of one lane holds a whole batch (not queue_size), and no worker was added.
    assert pool.stats().active_workers == 1
    assert pool.stats().backlog == 300
    held.set()
    assert pool.stop(drain=True, timeout=20) == []
    assert shared.batches == [["first"], items]
    assert max(concurrent for concurrent, _ in shared.checks) == 1


def test_a_lane_holds_one_batch_of_max_batch() -> None:
    limit = ScriptedLimit(1)
    pool, shared = make(limit, max_workers=2, max_batch=100)
    held = shared.hold("first")
    pool.dispatch("first")
    wait_until(lambda: pool.stats().calls_in_flight == 1)
    accepted = 0
    while pool.offer(accepted, weight=1):
        accepted += 1
    # In flight at most: one batch in the call and one waiting (limit x max_batch x 2).
    assert accepted == 100
    held.set()
    assert pool.stop(drain=True, timeout=20) == []
    assert shared.batches == [["first"], list(range(100))]


def test_a_raised_limit_splits_the_queue_by_key_and_keeps_key_order() -> None:
    limit = ScriptedLimit(1)
    pool, shared = make(limit, max_workers=2)
    held = shared.hold("hold")
    pool.dispatch("hold", key="h")
    wait_until(lambda: pool.stats().calls_in_flight == 1)
    items = [(f"k{i % 10}", i) for i in range(200)]
    for item in items:
        pool.dispatch(item, key=item[0])
    assert pool.stats().active_workers == 1
    limit.value = 2
    pool.dispatch("z", key="z")  # starts a second worker, which takes "z" and goes idle
    wait_until(lambda: ["z"] in shared.batches and pool.stats().calls_in_flight == 1)
    assert pool.stats().active_workers == 2
    held.set()
    assert pool.stop(drain=True, timeout=20) == []
    assert shared.batches[:2] == [["z"], ["hold"]]
    split = shared.batches[2:]
    assert len(split) == 2
    keys = [{key for key, _ in batch} for batch in split]
    assert not keys[0] & keys[1]  # each key went whole to one worker
    assert sorted(len(batch) for batch in split) == [100, 100]
    assert sorted(item for batch in split for item in batch) == sorted(items)
    for batch in split:
        for key in {key for key, _ in batch}:
            assert [i for k, i in batch if k == key] == [i for k, i in items if k == key]


def test_no_new_call_starts_until_calls_in_flight_fall_below_a_lowered_limit() -> None:
    limit = ScriptedLimit(3, script=[1])  # the first finished call lowers the limit to one
    pool, shared = make(limit, max_workers=3, min_workers=3)
    gates = {name: shared.hold(name) for name in ("a", "b", "c")}
    for name in ("a", "b", "c"):
        pool.dispatch(name, key=name)
    wait_until(lambda: pool.stats().calls_in_flight == 3)
    pool.dispatch("d", key="a")
    pool.dispatch("e", key="b")
    gates["a"].set()
    wait_until(lambda: limit.value == 1 and pool.stats().calls_in_flight == 2)
    gates["b"].set()
    wait_until(lambda: ("end", ("b",)) in shared.events)
    gates["c"].set()
    assert pool.stop(drain=True, timeout=20) == []
    ends_of_c = shared.events.index(("end", ("c",)))
    starts = [i for i, (kind, _) in enumerate(shared.events) if kind == "start"]
    # After the limit fell to one, the next call waited for both b and c to finish.
    assert all(i > ends_of_c for i in starts[3:])
    assert len(starts) == 5
    assert max(concurrent for concurrent, _ in shared.checks[3:]) == 1


def test_work_waited_for_the_limit_only_if_some_found_no_room_while_the_call_ran() -> None:
    limit = ScriptedLimit(1)
    clock = FakeClock()
    pool, shared = make(limit, max_workers=1, max_batch=8, clock=clock)  # a queue of 8 items
    first = shared.hold("first")
    pool.dispatch("first")
    wait_until(lambda: pool.stats().in_process == 1)
    # Queued behind the call with room to spare: the next batch carries it, one call keeps up.
    assert pool.offer("behind")
    first.set()
    wait_until(lambda: len(limit.waits) == 2)
    assert limit.waits == [False, False]
    second = shared.hold("second")
    pool.dispatch("second")
    wait_until(lambda: pool.stats().in_process == 1)
    offered = [pool.offer(("more", i)) for i in range(9)]
    assert offered == [True] * 8 + [False]  # the ninth found the queue full
    clock.advance(1.0)  # the batch after this call is taken later than the refusal
    second.set()
    wait_until(lambda: len(limit.waits) == 4)
    # The call that ran while an offer was refused says so; the batch after it does not.
    assert limit.waits[2:] == [True, False]
    assert pool.stop(drain=True, timeout=20) == []


def test_failed_calls_are_fed_to_the_limit() -> None:
    limit = ScriptedLimit(1)
    pool, shared = make(limit, max_workers=2)
    shared.failing.add("bad")
    for item in ("good", "bad", "fine"):
        pool.dispatch(item)
        wait_until(lambda: pool.stats().in_process == 0 and pool.stats().backlog == 0)
    pool.stop(drain=True, timeout=20)
    assert [failed for _, _, failed in limit.fed] == [False, True, False]
    assert all(in_flight == 1 for _, in_flight, _ in limit.fed)


@settings(max_examples=25, deadline=None)
@given(
    script=st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=40),
    keys=st.integers(min_value=1, max_value=12),
    items=st.integers(min_value=1, max_value=400),
)
def test_calls_in_flight_never_exceed_a_rising_limit(
    script: list[int], keys: int, items: int
) -> None:
    # A limit that only rises: every call that started did so below the limit of its time,
    # so at any moment the calls in flight are at most the limit now.
    rising = sorted(script)
    limit = ScriptedLimit(rising[0], script=rising[1:])
    pool, shared = make(limit, max_workers=6, max_batch=SPLIT_MIN * 2)
    sent = [(i % keys, i) for i in range(items)]
    for item in sent:
        pool.dispatch(item, key=item[0], timeout=20)
    assert pool.stop(drain=True, timeout=20) == []
    assert all(concurrent <= allowed for concurrent, allowed in shared.checks)
    delivered = [item for batch in shared.batches for item in batch]
    assert sorted(delivered) == sorted(sent)
    for key in range(keys):
        assert [i for k, i in delivered if k == key] == [i for k, i in sent if k == key]
