"""How many calls may be in flight, learned from the downstream's measured behaviour (pure).

The pool batches: a worker takes whatever its queue holds, so a call's duration grows with its
batch and raw call time says little about the downstream. The limit is therefore judged by
**throughput**: records completed per second over a window of calls, in the spirit of TCP's
congestion control and of adaptive concurrency limits, written for batches.

* **Start at one call.** One call in flight carrying everything that waits is the cheapest way
  to move records when the downstream keeps up; the limit is only raised when that is not
  enough.
* **Probe, measure, keep or revert.** When the limit was fully used and work was turned away
  for lack of room while the calls ran (the window was *busy*), the limit moves and the next
  window is compared with the throughput measured at the old limit: a step up is kept only
  if it bought ``gain`` more throughput (a downstream that serves calls in parallel); a step
  down only if it kept ``keep`` of it and records did not spend ``wait_gain`` longer in
  calls (the sidecar's CPU, not the downstream, was the limit). A reverted probe makes the
  next one wait twice as many windows, up to ``max_hold``; a kept one is followed at once by
  the next, in the same direction.
* **Slow start.** Until the first probe fails, a step up doubles the limit, as TCP's slow
  start does; then it moves one at a time.
* **Shrink on trouble.** A failed call cuts the limit by ``decrease`` (at most once a round of
  calls); a time per record ``latency_rise`` times the baseline at the same limit (calls
  waiting at a downstream that lost capacity) takes one step down, and again next window
  until the time per record is back near its baseline; a limit that was not reached in a
  window that was not busy takes one step down towards what is used.
* **Measure only what the step caused.** After every change, one round of calls (as many as
  the limit) settles before a window starts, so calls started under the old limit are not
  counted. Windows hold ``window_calls`` rounds and last at least ``window_seconds``.

It is a plain object with an injected clock: the pool feeds it every finished call under its
lock, and tests feed it from a simulated downstream.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class LimitTuning:
    """The limiter's constants; the defaults suit calls of a millisecond to a second.

    ``min_limit`` / ``max_limit`` / ``initial``: the range of the limit and where it starts.
    ``gain``: the throughput a step up must add to be kept; ``keep`` and ``wait_gain``: the
    throughput a step down must keep, and how much longer records may spend in calls after it.
    ``decrease``: the factor a failed call cuts the limit by. ``latency_rise``: how many times
    its baseline the time per record may rise before the limit steps down. ``window_calls`` and
    ``window_seconds``: a window's length, in rounds of calls and at least in seconds.
    ``max_hold``: the most windows between probes.
    """

    min_limit: int = 1
    max_limit: int = 32
    initial: int = 1
    gain: float = 0.10
    keep: float = 0.92
    wait_gain: float = 0.25
    decrease: float = 0.5
    latency_rise: float = 2.0
    window_calls: int = 3
    window_seconds: float = 0.05
    max_hold: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.min_limit <= self.initial <= self.max_limit:
            raise ValueError("need 1 <= min_limit <= initial <= max_limit")
        if self.gain < 0 or not 0 < self.keep <= 1 or not 0 < self.decrease < 1:
            raise ValueError("need gain >= 0, 0 < keep <= 1 and 0 < decrease < 1")
        if not 0 < self.wait_gain < 1:
            raise ValueError("need 0 < wait_gain < 1")
        if self.latency_rise <= 1 or self.window_calls < 1 or self.window_seconds < 0:
            raise ValueError("need latency_rise > 1, window_calls >= 1, window_seconds >= 0")
        if self.max_hold < 1:
            raise ValueError("max_hold must be >= 1")


@dataclass(frozen=True, slots=True)
class LimitChange:
    """One change of the limit and why (for logs)."""

    old: int
    new: int
    reason: str


class CallLimit(Protocol):
    """What the pool needs of a limit: its value, and every finished call fed to it."""

    @property
    def limit(self) -> int:
        """Calls allowed in flight now (at least 1)."""

    def on_call(
        self, records: int, seconds: float, failed: bool, in_flight: int, waiting: bool
    ) -> LimitChange | None:
        """Account one finished call; return the change it caused, if any."""


@dataclass(frozen=True, slots=True)
class _Window:
    """What one window of calls measured."""

    rate: float  # records per second
    per_record: float  # call seconds per record
    wait: float  # seconds a record spent in its call, on average over records
    busy: bool  # the limit was fully used and work waited, for most calls
    used: bool  # the limit was reached at least once


@dataclass(frozen=True, slots=True)
class _Probe:
    """A step being tried, and what the limit before it measured."""

    before: int
    rate: float
    wait: float


class AdaptiveLimit:
    """The number of calls allowed in flight, moved by what finished calls measured."""

    def __init__(self, tuning: LimitTuning | None = None, clock: Clock = time.monotonic) -> None:
        self.tuning = tuning or LimitTuning()
        self._clock = clock
        self._limit = self.tuning.initial
        self.changes = 0
        self.last_change: LimitChange | None = None
        self._probe: _Probe | None = None
        self._slow_start = True
        self._next_step = 1
        self._hold = 0
        self._hold_len = 1
        self._baseline: float | None = None
        self._rate: float | None = None
        self._wait: float | None = None
        self._settling = False
        self._start = 0.0
        self._calls = 0
        self._records = 0
        self._seconds = 0.0
        self._weighted = 0.0
        self._busy = 0
        self._peak = 0
        self._reset_window(settle=False)

    @property
    def limit(self) -> int:
        """Calls allowed in flight now."""
        return self._limit

    def on_call(
        self, records: int, seconds: float, failed: bool, in_flight: int, waiting: bool
    ) -> LimitChange | None:
        """Account one finished call; return the change it caused, if any.

        ``in_flight`` counts the calls in flight when this one finished, itself included;
        ``waiting`` says whether work found no room while it ran (the queues were full):
        records merely queued behind a call are the next batch, and one call keeps up with
        them. Together they tell whether the limit, and not the traffic or the sidecar's own
        CPU, was what held throughput back.
        """
        t = self.tuning
        if failed:
            if self._settling:
                # The round after a change has not ended: a cut now would count the same
                # trouble twice. It still counts towards the end of the round.
                self._calls += 1
                if self._calls >= self._limit:
                    self._reset_window(settle=False)
                return None
            self._slow_start = False
            if self._limit == t.min_limit:
                return None
            # Multiplicative decrease, at most once a round: the change starts a settle round.
            self._hold = self._hold_len = t.max_hold
            self._probe = None
            return self._change(max(t.min_limit, math.floor(self._limit * t.decrease)), "failure")
        seconds = max(0.0, seconds)
        self._calls += 1
        self._records += records
        self._seconds += seconds
        self._weighted += seconds * records
        self._peak = max(self._peak, in_flight)
        self._busy += in_flight >= self._limit and waiting
        if self._settling:
            if self._calls >= self._limit:
                self._reset_window(settle=False)
            return None
        elapsed = self._clock() - self._start
        if self._calls < t.window_calls * self._limit or elapsed < t.window_seconds:
            return None
        if elapsed <= 0 or not self._records:
            return None
        window = _Window(
            rate=self._records / elapsed,
            per_record=self._seconds / self._records,
            wait=self._weighted / self._records,
            busy=2 * self._busy >= self._calls,
            used=self._peak >= self._limit,
        )
        self._reset_window(settle=False)
        return self._decide(window)

    # -- internals ---------------------------------------------------------------------------

    def _decide(self, w: _Window) -> LimitChange | None:
        t = self.tuning
        if self._probe is not None:
            return self._judge(self._probe, w)
        if self._baseline is None:
            self._baseline = w.per_record
        elif w.per_record > self._baseline * t.latency_rise and self._limit > t.min_limit:
            # Calls wait at the downstream: step down, and keep the baseline, so that the
            # next window steps down again until the time per record is back near it. Then
            # probes go on downwards while throughput holds.
            self._slow_start = False
            self._next_step = -1
            self._hold = 0
            return self._change(self._limit - 1, "per-record time rose", keep_baseline=True)
        else:
            # Follow slow drift, so that only a sharp rise counts as one.
            self._baseline = 0.8 * self._baseline + 0.2 * w.per_record
        if not w.used and not w.busy:
            if self._limit > t.min_limit:
                return self._change(self._limit - 1, "limit not used")
            return None
        if not w.busy:
            return None
        # Probes compare with several windows at this limit, not one: a single window is
        # noisy, and a noisy low baseline would let a useless step up pass.
        self._rate = w.rate if self._rate is None else 0.5 * self._rate + 0.5 * w.rate
        self._wait = w.wait if self._wait is None else 0.5 * self._wait + 0.5 * w.wait
        if self._hold > 0:
            self._hold -= 1
            return None
        return self._start_probe()

    def _start_probe(self) -> LimitChange | None:
        t = self.tuning
        assert self._rate is not None and self._wait is not None
        step = self._next_step
        if step > 0 and self._slow_start:
            # Slow start, as TCP's: double while doubling pays, then go a step at a time.
            target = min(t.max_limit, self._limit * 2)
        else:
            target = self._limit + step
        if not t.min_limit <= target <= t.max_limit or target == self._limit:
            step = -step
            target = self._limit + step
            if not t.min_limit <= target <= t.max_limit:
                return None
        self._next_step = step
        self._probe = _Probe(self._limit, self._rate, self._wait)
        return self._change(target, "probe up" if target > self._limit else "probe down")

    def _judge(self, probe: _Probe, w: _Window) -> LimitChange | None:
        """Keep a step that paid, revert one that did not."""
        t = self.tuning
        self._probe = None
        kept_rate = w.rate >= probe.rate * t.keep
        if self._limit > probe.before:
            # Up pays only in throughput. (Shorter calls alone do not count: right after a step
            # up the new calls carry less, which would look like a gain that does not last.)
            kept = w.rate >= probe.rate * (1 + t.gain)
        else:
            # Down must keep the throughput, and not make records wait much longer.
            kept = kept_rate and w.wait <= probe.wait * (1 + t.wait_gain)
        if kept:
            self._hold = 0
            self._hold_len = 1
            self._baseline = w.per_record
            self._rate = w.rate
            self._wait = w.wait
            # The window that judged this step is the next step's baseline: go on at once
            # in the same direction while the limit is what holds the work back.
            return self._start_probe() if w.busy else None
        overshoot = self._slow_start and self._limit > probe.before
        self._slow_start = False
        self._hold_len = min(t.max_hold, self._hold_len * 2)
        self._hold = self._hold_len
        if overshoot:
            # Doubling overshot; a single step up from where it was may still pay.
            self._hold = 0
        else:
            self._next_step = -self._next_step
        direction = "up" if self._limit > probe.before else "down"
        return self._change(probe.before, f"probe {direction} paid nothing")

    def _change(self, new: int, reason: str, keep_baseline: bool = False) -> LimitChange:
        change = LimitChange(self._limit, new, reason)
        self._limit = new
        self.changes += 1
        self.last_change = change
        if self._probe is None:
            # A new limit has its own measurements (a probe keeps the old ones to compare).
            if not keep_baseline:
                self._baseline = None
            self._rate = None
            self._wait = None
        self._reset_window(settle=True)
        return change

    def _reset_window(self, settle: bool) -> None:
        self._settling = settle
        self._start = self._clock()
        self._calls = 0
        self._records = 0
        self._seconds = 0.0
        self._weighted = 0.0
        self._busy = 0
        self._peak = 0
