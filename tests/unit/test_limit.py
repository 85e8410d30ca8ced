"""The adaptive call limit against simulated downstreams, in simulated time (no sleeps)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagging_sidecar.pool import AdaptiveLimit, LimitChange, LimitTuning

from .downstream_models import Driver, ParallelServers, SharedCpu

# 50 microseconds per record, as a downstream that does real work per record.
SLOW = 50e-6


def most_common(limits: list[int]) -> int:
    return Counter(limits).most_common(1)[0][0]


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("servers", [2, 3, 4, 6])
def test_converges_to_the_servers_of_a_parallel_downstream(servers: int, seed: int) -> None:
    driver = Driver(ParallelServers(servers, SLOW, seed=seed))
    driver.run(4000)
    settled = driver.settled_limits(1500)
    assert most_common(settled) == servers
    assert settled.count(servers) > len(settled) * 3 / 4
    # Probes go a step either side now and then; noise may let one more step pass.
    assert min(settled) >= servers - 1
    assert max(settled) <= servers + 2


def test_slow_start_doubles_until_a_doubling_stops_paying() -> None:
    driver = Driver(ParallelServers(6, SLOW))
    changes: list[LimitChange] = []
    while len(changes) < 12:
        driver.run(1)
        change = driver.limiter.last_change
        if change is not None and (not changes or change is not changes[-1]):
            changes.append(change)
    first_failure = next(i for i, c in enumerate(changes) if c.reason.endswith("paid nothing"))
    ups = changes[:first_failure]
    assert ups and all(c.new == 2 * c.old and c.reason == "probe up" for c in ups)
    # 4 -> 8 still pays against 6 servers; 8 -> 16 does not, and is reverted.
    assert (changes[first_failure].old, changes[first_failure].new) == (16, 8)
    # From then on, probes move one step at a time.
    later = [c for c in changes[first_failure + 1 :] if c.reason.startswith("probe")]
    assert later and all(abs(c.new - c.old) == 1 for c in later)


def test_stays_at_one_call_when_one_server_does_all_the_work() -> None:
    driver = Driver(ParallelServers(1, SLOW))
    driver.run(3000)
    settled = driver.settled_limits(1500)
    assert most_common(settled) == 1
    assert max(settled) <= 2


@pytest.mark.parametrize("per_record", [2e-6, 5e-6, 20e-6])
def test_stays_near_one_when_the_sidecars_cpu_is_the_limit(per_record: float) -> None:
    driver = Driver(SharedCpu(per_record))
    driver.run(3000)
    settled = driver.settled_limits(1500)
    assert most_common(settled) == 1
    assert max(settled) <= 2
    # Probes cost little: most calls run at the limit of one.
    assert settled.count(1) > len(settled) * 3 / 4


def test_backs_off_on_failures() -> None:
    driver = Driver(ParallelServers(8, SLOW))
    driver.run(3000)
    before = driver.limiter.limit
    assert before >= 6
    driver.failing = True
    driver.run(2 * before)
    assert driver.limiter.limit <= before // 2
    assert driver.limiter.last_change is not None
    assert driver.limiter.last_change.reason == "failure"
    driver.run(200)
    assert driver.limiter.limit == driver.tuning.min_limit


def test_follows_a_downstream_that_loses_capacity() -> None:
    servers = ParallelServers(8, SLOW)
    driver = Driver(servers)
    driver.run(3000)
    assert driver.limiter.limit >= 7
    servers.set_servers(2, driver.now)
    driver.run(5000)
    settled = driver.settled_limits(1500)
    assert most_common(settled) in (2, 3)
    assert max(settled) <= 4


def test_per_record_time_rising_steps_the_limit_down() -> None:
    servers = ParallelServers(6, SLOW)
    driver = Driver(servers)
    driver.run(3000)
    limit = driver.limiter.limit
    servers.set_servers(1, driver.now)
    reasons = []
    for _ in range(400):
        driver.run(1)
        change = driver.limiter.last_change
        if change is not None and change.reason not in reasons:
            reasons.append(change.reason)
    assert "per-record time rose" in reasons
    assert driver.limiter.limit < limit


def test_grows_again_when_the_downstream_recovers() -> None:
    servers = ParallelServers(2, SLOW)
    driver = Driver(servers)
    driver.run(3000)
    assert driver.limiter.limit <= 3
    servers.set_servers(6, driver.now)
    driver.run(6000)
    assert most_common(driver.settled_limits(1500)) >= 5


def test_an_unused_limit_comes_down() -> None:
    clock = [0.0]
    limiter = AdaptiveLimit(LimitTuning(initial=6, max_limit=8), clock=lambda: clock[0])
    for _ in range(500):
        clock[0] += 0.01
        # Traffic for one call at a time: never more in flight, nothing waiting.
        limiter.on_call(100, 0.01, failed=False, in_flight=1, waiting=False)
    assert limiter.limit == 1


def test_tuning_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="min_limit"):
        LimitTuning(min_limit=3, initial=2)
    with pytest.raises(ValueError, match="decrease"):
        LimitTuning(decrease=1.5)


calls = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=5000),  # records
        st.floats(min_value=0, max_value=2.0),  # seconds
        st.booleans(),  # failed
        st.integers(min_value=1, max_value=40),  # in flight
        st.booleans(),  # waiting
        st.floats(min_value=0, max_value=1.0),  # clock advance
    ),
    max_size=300,
)


@settings(max_examples=100, deadline=None)
@given(
    calls=calls,
    low=st.integers(min_value=1, max_value=4),
    span=st.integers(min_value=0, max_value=12),
)
def test_the_limit_stays_within_its_bounds(
    calls: list[tuple[int, float, bool, int, bool, float]], low: int, span: int
) -> None:
    clock = [0.0]
    tuning = LimitTuning(min_limit=low, max_limit=low + span, initial=low, window_seconds=0.0)
    limiter = AdaptiveLimit(tuning, clock=lambda: clock[0])
    for records, seconds, failed, in_flight, waiting, advance in calls:
        clock[0] += advance
        before = limiter.limit
        change = limiter.on_call(records, seconds, failed, in_flight, waiting)
        assert low <= limiter.limit <= low + span
        if change is None:
            assert limiter.limit == before
        else:
            assert (change.old, change.new) == (before, limiter.limit)
            # Only a failure, a slow-start doubling and its revert move it by more than one.
            assert (
                abs(change.new - change.old) == 1
                or change.reason in ("failure", "probe up paid nothing")
                or (change.reason == "probe up" and change.new == min(low + span, 2 * change.old))
            )
