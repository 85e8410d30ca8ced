"""Calls on the caller's thread: only while the pool is idle and calls are quick, one attempt,
and a failed call's batch handed back to the caller, for the workers."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

from tagging_sidecar.errors import PoolClosed
from tagging_sidecar.pool import LimitChange, Rejected, ScalingPolicy, WorkerPool

from .fakes import Recorder, RecordingDispatcher, wait_until


class SetLimit:
    """A call limit the test sets; records the calls fed to it (records, in flight, failed)."""

    def __init__(self, limit: int = 1) -> None:
        self.limit = limit
        self.fed: list[tuple[int, int, bool]] = []

    def on_call(
        self, records: int, seconds: float, failed: bool, in_flight: int, waiting: bool
    ) -> LimitChange | None:
        self.fed.append((records, in_flight, failed))
        return None


class Caller:
    """The caller's dispatcher: records the thread of each call; fails while told to."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.threads: list[int] = []
        self.fail: Exception | None = None
        self.reject: set[Any] = set()
        self.before_calls = 0
        self.after_calls = 0

    def before(self) -> None:
        self.before_calls += 1

    def process(self, batch: Sequence[Any]) -> Sequence[Rejected[Any]]:
        self.threads.append(threading.get_ident())
        if self.fail is not None:
            raise self.fail
        self.batches.append(list(batch))
        return [Rejected(item, ValueError("refused")) for item in batch if item in self.reject]

    def after(self) -> None:
        self.after_calls += 1


class Done:
    """The pool's ``on_done``: every item reported, with the thread that reported it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[Any] = []
        self.rejected: list[Any] = []
        self.threads: list[int] = []

    def __call__(self, items: Sequence[Any], rejected: Sequence[Rejected[Any]]) -> None:
        with self.lock:
            self.items.extend(items)
            self.rejected.extend(r.item for r in rejected)
            self.threads.append(threading.get_ident())


def make(
    limit: SetLimit | None = None,
    caller: Caller | None = None,
    quick_call: float = 60.0,
    max_batch: int = 100,
    min_workers: int = 1,
    without_caller: bool = False,
) -> tuple[WorkerPool[Any], Recorder, Caller, Done]:
    recorder, done = Recorder(), Done()
    caller = caller or Caller()
    pool: WorkerPool[Any] = WorkerPool(
        lambda: RecordingDispatcher(recorder),
        done,
        ScalingPolicy(min_workers=min_workers, max_workers=4, queue_size=8, idle_timeout=60),
        max_batch=max_batch,
        limiter=limit or SetLimit(),
        caller=None if without_caller else caller,
        quick_call=quick_call,
    )
    pool.start()
    return pool, recorder, caller, done


def warm(pool: WorkerPool[Any], done: Done) -> None:
    """One batch through a worker: a worker is ready and the last call was quick."""
    pool.dispatch("warm-up")
    wait_until(lambda: "warm-up" in done.items and pool.stats().calls_in_flight == 0)


def test_an_idle_pool_makes_the_call_on_the_callers_thread() -> None:
    limit = SetLimit()
    pool, recorder, caller, done = make(limit)
    warm(pool, done)
    assert pool.call_here(["a", "b"], 3)
    here = threading.get_ident()
    assert caller.batches == [["a", "b"]] and caller.threads == [here]
    # Reported before call_here returned, on this thread, and fed to the limit as one call.
    assert done.items[-2:] == ["a", "b"] and done.threads[-1] == here
    assert limit.fed[-1] == (3, 1, False)
    assert recorder.delivered == ["warm-up"]  # no worker took part
    assert caller.before_calls == 1
    stats = pool.stats()
    assert (stats.backlog, stats.in_process, stats.calls_in_flight) == (0, 0, 0)
    pool.stop()
    assert caller.after_calls == 1


def test_what_the_caller_rejects_is_reported_as_rejected() -> None:
    pool, _, caller, done = make()
    warm(pool, done)
    caller.reject = {"bad"}
    assert pool.call_here(["good", "bad"], 2)
    assert done.rejected == ["bad"] and done.items[-2:] == ["good", "bad"]
    pool.stop()


def test_no_call_here_before_a_worker_has_made_a_quick_call() -> None:
    # Nothing proves yet that the downstream answers, or answers quickly.
    pool, _, caller, done = make()
    assert not pool.call_here(["a"], 1)
    assert caller.batches == [] and caller.before_calls == 0 and done.items == []
    pool.stop()


def test_no_call_here_after_a_slow_call() -> None:
    # A call slower than quick_call: the next may hold the caller's thread as long.
    pool, _, caller, done = make(quick_call=0.0)
    warm(pool, done)
    assert not pool.call_here(["a"], 1)
    assert caller.batches == []
    pool.stop()


def test_no_call_here_while_a_call_is_in_flight_or_records_wait() -> None:
    pool, recorder, caller, done = make(limit=SetLimit(1))
    warm(pool, done)
    recorder.gate.clear()
    pool.dispatch("slow")
    wait_until(lambda: pool.stats().calls_in_flight == 1)
    assert not pool.call_here(["a"], 1)
    pool.dispatch("queued")  # waits behind the call: a backlog
    assert not pool.call_here(["b"], 1)
    recorder.gate.set()
    wait_until(lambda: done.items[-2:] == ["slow", "queued"])
    assert caller.batches == []
    pool.stop()


@pytest.mark.parametrize("case", ["limit above one", "batch above max_batch", "no caller"])
def test_no_call_here_when_a_worker_must_make_it(case: str) -> None:
    limit = SetLimit()
    pool, _, caller, done = make(limit, max_batch=10, without_caller=case == "no caller")
    warm(pool, done)
    weight = 1
    if case == "limit above one":
        limit.limit = 2  # the downstream takes calls in parallel: the workers make them
    elif case == "batch above max_batch":
        weight = 11
    assert not pool.call_here(["a"], weight)
    assert caller.batches == []
    pool.stop()


def test_no_call_here_without_a_ready_worker_or_once_stopped() -> None:
    pool, recorder, caller, done = make()
    warm(pool, done)
    pool.stop()
    with pytest.raises(PoolClosed):
        pool.dispatch("late")
    assert not pool.call_here(["a"], 1)
    # No worker kept when idle: none ready, so none whose readiness vouches for the channel.
    pool, recorder, caller, done = make(min_workers=0)
    assert not pool.call_here(["a"], 1)
    assert caller.batches == [] and recorder.delivered == []
    pool.stop()


def test_a_failed_call_here_hands_the_batch_back_and_ends_calls_here() -> None:
    limit = SetLimit()
    pool, recorder, caller, done = make(limit)
    warm(pool, done)
    caller.fail = ConnectionError("stream reset")
    assert not pool.call_here(["a1", "b1", "a2"], 3)  # not processed: the caller still owns it
    assert limit.fed[-1] == (3, 1, True)  # a failed call, for the limit
    assert done.items == ["warm-up"] and done.rejected == []  # nothing reported as done
    stats = pool.stats()
    assert (stats.backlog, stats.in_process, stats.calls_in_flight) == (0, 0, 0)
    assert recorder.delivered == ["warm-up"]  # nothing queued behind the caller's back
    caller.fail = None
    assert not pool.call_here(["c1"], 1)  # the last call failed: workers only
    assert len(caller.threads) == 1 and caller.batches == []
    # The caller hands the batch on, in order; a worker delivers it.
    for item in ("a1", "b1", "a2"):
        assert pool.offer(item, key=item[0])
    wait_until(lambda: "a2" in done.items)
    assert recorder.delivered[1:] == ["a1", "b1", "a2"]
    pool.stop()


def test_call_here_again_once_a_worker_call_was_quick() -> None:
    pool, _, caller, done = make()
    warm(pool, done)
    caller.fail = ConnectionError("stream reset")
    assert not pool.call_here(["a"], 1)
    assert pool.offer("a")
    wait_until(lambda: "a" in done.items)  # retried by a worker, quickly
    caller.fail = None
    assert pool.call_here(["b"], 1)
    assert caller.batches == [["b"]] and caller.before_calls == 1
    pool.stop()
