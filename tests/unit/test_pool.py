"""The adaptive worker pool with an in-memory dispatcher and a controllable clock."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from tagging_sidecar.errors import PoolClosed, PoolFull
from tagging_sidecar.pool import AdaptiveLimit, LimitTuning, Rejected, ScalingPolicy, WorkerPool

from .fakes import FakeClock, Recorder, RecordingDispatcher, wait_until


class Results:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done: list[Any] = []
        self.rejected: list[Rejected[Any]] = []

    def __call__(self, items: Sequence[Any], rejected: Sequence[Rejected[Any]]) -> None:
        with self.lock:
            self.done.extend(items)
            self.rejected.extend(rejected)


# Every behaviour below holds under both scaling policies: the seed's backlog rule, and the
# adaptive call limit, starting at one call or (for the tests about many workers) at the most.
SCALINGS = ["seed", "adaptive", "adaptive-wide"]
WIDE = ["seed", "adaptive-wide"]


def limiter_for(scaling: str, policy: ScalingPolicy) -> AdaptiveLimit | None:
    if scaling == "seed":
        return None
    top = policy.max_workers
    return AdaptiveLimit(LimitTuning(max_limit=top, initial=top if scaling.endswith("wide") else 1))


def make_pool(
    recorder: Recorder,
    policy: ScalingPolicy,
    clock: Callable[[], float] | None = None,
    results: Results | None = None,
    scaling: str = "seed",
) -> tuple[WorkerPool[Any], Results]:
    results = results or Results()
    pool: WorkerPool[Any] = WorkerPool(
        lambda: RecordingDispatcher(recorder),
        results,
        policy,
        clock=clock if clock is not None else FakeClock(),
        before_backoff=(0.001, 0.01),
        limiter=limiter_for(scaling, policy),
    )
    pool.start()
    return pool, results


def test_policy_follows_the_seed_rule() -> None:
    policy = ScalingPolicy(min_workers=0, max_workers=32, queue_size=128)
    assert policy.wanted(0) == 0
    assert policy.wanted(1) == 1
    assert policy.wanted(4) == 2  # backlog / (128 / 32) + 1
    assert policy.wanted(40) == 11
    assert policy.wanted(10_000) == 32
    assert not policy.may_retire(idle_for=29.9, active=2)
    assert policy.may_retire(idle_for=30.0, active=2)
    assert not ScalingPolicy(min_workers=2).may_retire(idle_for=999, active=2)


def test_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="min_workers"):
        ScalingPolicy(min_workers=5, max_workers=2)


@pytest.mark.parametrize("scaling", WIDE)
def test_scales_up_under_a_burst_and_never_above_max(scaling: str) -> None:
    recorder = Recorder()
    recorder.gate.clear()  # workers block, so the backlog builds up
    policy = ScalingPolicy(min_workers=1, max_workers=4, queue_size=8, idle_timeout=60)
    pool, results = make_pool(recorder, policy, scaling=scaling)
    accepted = 0
    while pool.offer(accepted):
        accepted += 1
    stats = pool.stats()
    assert stats.active_workers == 4
    assert stats.scale_ups == 4
    assert accepted <= 4 * 8 * 2  # bounded: queue_size waiting per worker + one batch in hand
    recorder.gate.set()
    assert pool.stop(drain=True, timeout=20) == []
    assert sorted(results.done) == list(range(accepted))
    assert recorder.max_concurrent <= 4


@pytest.mark.parametrize("scaling", WIDE)
def test_scales_down_after_idle_time(scaling: str) -> None:
    recorder = Recorder()
    clock = FakeClock()
    policy = ScalingPolicy(min_workers=1, max_workers=4, queue_size=8, idle_timeout=30)
    pool, results = make_pool(recorder, policy, clock, scaling=scaling)
    recorder.gate.clear()
    for i in range(24):
        pool.dispatch(i)
    assert pool.stats().active_workers == 4
    recorder.gate.set()
    wait_until(lambda: len(results.done) == 24)
    clock.advance(35)
    pool.maintain()
    wait_until(lambda: pool.stats().active_workers == 1)
    assert pool.stats().scale_downs == 3
    assert recorder.after_calls == 3
    pool.stop()


@pytest.mark.parametrize("scaling", SCALINGS)
def test_arrivals_do_not_cut_short_the_backoff_of_a_worker_that_is_not_ready(
    scaling: str,
) -> None:
    # Every arrival woke a worker waiting out its backoff after a failed ``before``, and it
    # tried again at once: against a downstream that is down, an attempt per item queued.
    recorder = Recorder()
    recorder.fail_before = 1
    policy = ScalingPolicy(min_workers=0, max_workers=1, queue_size=8)
    pool: WorkerPool[Any] = WorkerPool(
        lambda: RecordingDispatcher(recorder),
        Results(),
        policy,
        clock=FakeClock(),
        before_backoff=(60.0, 60.0),  # a backoff no test waits out
        limiter=limiter_for(scaling, policy),
    )
    pool.start()
    pool.dispatch(0)
    wait_until(lambda: pool.stats().before_failures == 1)
    for item in range(1, 5):
        pool.dispatch(item)
        # A worker woken by it would try again at once: give it the chance to show.
        quiet_until = time.monotonic() + 0.1
        while recorder.before_calls == 1 and time.monotonic() < quiet_until:
            time.sleep(0.005)
    assert recorder.before_calls == 1
    assert pool.stats().backlog == 5
    assert pool.stop(drain=False, timeout=20) == [0, 1, 2, 3, 4]
    assert recorder.delivered == []


@pytest.mark.parametrize("scaling", SCALINGS)
def test_failing_before_is_retried_and_nothing_is_sent_meanwhile(scaling: str) -> None:
    recorder = Recorder()
    recorder.fail_before = 3
    policy = ScalingPolicy(min_workers=0, max_workers=1, queue_size=8)
    pool, results = make_pool(recorder, policy, scaling=scaling)
    for i in range(5):
        pool.dispatch(i)
    wait_until(lambda: len(results.done) == 5)
    assert recorder.before_calls == 4
    assert pool.stats().before_failures == 3
    assert recorder.delivered == [0, 1, 2, 3, 4]
    pool.stop()


@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_order_per_key_survives_random_completion_times(seed: int, scaling: str) -> None:
    random.seed(seed)
    recorder = Recorder()
    recorder.jitter = 0.002
    policy = ScalingPolicy(min_workers=1, max_workers=6, queue_size=12, idle_timeout=0.01)
    # A real clock and a tiny idle timeout: workers leave and come back during the run.
    pool, _ = make_pool(recorder, policy, clock=time.monotonic, scaling=scaling)
    sent: dict[int, list[int]] = {}
    for i in range(600):
        key = random.randrange(10)
        sent.setdefault(key, []).append(i)
        pool.dispatch((key, i), key=key)
    assert pool.stop(drain=True, timeout=30) == []
    for key, expected in sent.items():
        assert [i for k, i in recorder.delivered if k == key] == expected


@pytest.mark.parametrize("scaling", SCALINGS)
def test_stop_with_drain_processes_everything_accepted(scaling: str) -> None:
    recorder = Recorder()
    recorder.jitter = 0.001
    policy = ScalingPolicy(min_workers=0, max_workers=3, queue_size=50)
    pool, results = make_pool(recorder, policy, scaling=scaling)
    for i in range(300):
        pool.dispatch(i)
    assert pool.stop(drain=True, timeout=30) == []
    assert sorted(results.done) == list(range(300))
    with pytest.raises(PoolClosed):
        pool.dispatch(301)


def gated_pool(policy: ScalingPolicy, scaling: str) -> tuple[Recorder, WorkerPool[Any], Results]:
    """A pool whose calls block until the recorder's gate is set."""
    recorder = Recorder()
    recorder.gate.clear()
    pool, results = make_pool(recorder, policy, scaling=scaling)
    return recorder, pool, results


@pytest.mark.parametrize("scaling", SCALINGS)
def test_stop_without_drain_returns_what_was_never_sent(scaling: str) -> None:
    policy = ScalingPolicy(min_workers=0, max_workers=1, queue_size=100)
    recorder, pool, results = gated_pool(policy, scaling)
    for i in range(10):
        pool.dispatch(i)
    wait_until(lambda: recorder.concurrent == 1)
    in_hand = pool.stats().in_process
    threading.Timer(0.05, recorder.gate.set).start()
    leftovers = pool.stop(drain=False, timeout=10)
    assert len(leftovers) == 10 - in_hand
    assert sorted(results.done + leftovers) == list(range(10))


@pytest.mark.parametrize("scaling", SCALINGS)
def test_dispatcher_ending_its_worker_loses_nothing(scaling: str) -> None:
    recorder = Recorder()
    recorder.end_every = 3
    policy = ScalingPolicy(min_workers=1, max_workers=2, queue_size=4)
    pool, _ = make_pool(recorder, policy, scaling=scaling)
    for i in range(100):
        pool.dispatch(i, key=i % 2)
    assert pool.stop(drain=True, timeout=30) == []
    assert sorted(recorder.delivered) == list(range(100))
    for key in (0, 1):
        assert [i for i in recorder.delivered if i % 2 == key] == list(range(key, 100, 2))
    assert recorder.before_calls > 2  # workers were restarted after ending


@pytest.mark.parametrize("scaling", SCALINGS)
def test_full_pool_applies_backpressure(scaling: str) -> None:
    policy = ScalingPolicy(min_workers=1, max_workers=1, queue_size=5)
    recorder, pool, _ = gated_pool(policy, scaling)
    pool.dispatch("in hand")
    wait_until(lambda: recorder.concurrent == 1)
    accepted = 0
    while pool.offer(accepted):
        accepted += 1
    assert accepted == 5
    with pytest.raises(PoolFull):
        pool.dispatch("one more", timeout=0.05)
    recorder.gate.set()
    pool.dispatch("after space", timeout=20)
    pool.stop()


@pytest.mark.parametrize("scaling", SCALINGS)
def test_a_key_is_held_while_its_items_are_queued_or_in_a_call(scaling: str) -> None:
    policy = ScalingPolicy(min_workers=1, max_workers=1, queue_size=5)
    recorder, pool, results = gated_pool(policy, scaling)
    pool.dispatch("first", key="a")
    wait_until(lambda: recorder.concurrent == 1)  # in a call
    pool.dispatch("second", key="b")  # queued behind it
    assert pool.holds(["a"]) and pool.holds(["x", "b"]) and not pool.holds(["x", "y"])
    recorder.gate.set()
    wait_until(lambda: len(results.done) == 2)
    wait_until(lambda: not pool.holds(["a", "b"]))
    pool.stop()


@pytest.mark.parametrize("scaling", SCALINGS)
def test_dispatcher_errors_reject_the_batch_but_never_kill_the_pool(scaling: str) -> None:
    recorder = Recorder()
    recorder.raise_on = lambda batch: RuntimeError("boom") if "bad" in batch else None
    policy = ScalingPolicy(min_workers=1, max_workers=1, queue_size=1)
    pool, results = make_pool(recorder, policy, scaling=scaling)
    for item in ("a", "bad", "b"):
        pool.dispatch(item)
    assert pool.stop(drain=True, timeout=10) == []
    assert recorder.delivered == ["a", "b"]
    assert [r.item for r in results.rejected] == ["bad"]
    assert isinstance(results.rejected[0].error, RuntimeError)


@pytest.mark.parametrize("scaling", SCALINGS)
def test_weighted_items_fill_a_batch_up_to_the_limit(scaling: str) -> None:
    recorder = Recorder()
    recorder.gate.clear()
    policy = ScalingPolicy(min_workers=1, max_workers=1, queue_size=10)
    pool, _ = make_pool(recorder, policy, scaling=scaling)
    pool.dispatch("first", weight=1)
    wait_until(lambda: recorder.concurrent == 1)
    assert pool.offer("w4a", weight=4)
    assert pool.offer("w4b", weight=4)
    assert not pool.offer("w4c", weight=4)  # 12 would exceed the queue size of 10
    recorder.gate.set()
    wait_until(lambda: len(recorder.batches) == 2)
    pool.dispatch("w4c", weight=4)
    pool.stop(drain=True, timeout=10)
    assert recorder.batches == [["first"], ["w4a", "w4b"], ["w4c"]]


@pytest.mark.parametrize("scaling", SCALINGS)
def test_the_next_batch_is_taken_before_results_are_reported(scaling: str) -> None:
    # Whoever refills the pool when results arrive must find room: by then the worker has
    # already taken what waited in its queue.
    recorder = Recorder()
    recorder.gate.clear()
    policy = ScalingPolicy(min_workers=1, max_workers=1, queue_size=8)
    seen: list[tuple[int, int]] = []
    pools: list[WorkerPool[Any]] = []

    def on_done(items: Sequence[Any], _rejected: Sequence[Rejected[Any]]) -> None:
        if items == ["first"]:
            stats = pools[0].stats()
            seen.append((stats.backlog, stats.in_process))

    pool: WorkerPool[Any] = WorkerPool(
        lambda: RecordingDispatcher(recorder),
        on_done,
        policy,
        clock=FakeClock(),
        limiter=limiter_for(scaling, policy),
    )
    pools.append(pool)
    pool.start()
    pool.dispatch("first")
    wait_until(lambda: recorder.concurrent == 1)
    for i in range(5):
        pool.dispatch(i)
    recorder.gate.set()
    assert pool.stop(drain=True, timeout=20) == []
    assert seen == [(0, 5)]
    assert recorder.batches == [["first"], [0, 1, 2, 3, 4]]
