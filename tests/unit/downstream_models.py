"""Simulated downstreams for the concurrency limiter: deterministic, in simulated time.

Each model starts calls of a batch of records and says when the next one finishes. A driver
keeps as many calls in flight as the limiter allows while work is waiting, feeds every
finished call to the limiter and advances the simulated clock; nothing sleeps.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

from tagging_sidecar.pool.limit import AdaptiveLimit, LimitTuning


@dataclass
class Call:
    """One call in flight."""

    started: float
    records: int
    finish: float = 0.0
    work: float = 0.0


class ParallelServers:
    """``servers`` servers; a call holds one for ``overhead + per_record * records`` seconds.

    Calls beyond ``servers`` wait at the downstream in arrival order, so more calls in flight
    buy throughput up to ``servers`` and only latency past it.
    """

    def __init__(
        self, servers: int, per_record: float, overhead: float = 0.0005, seed: int = 1
    ) -> None:
        self.servers = servers
        self._jitter = random.Random(seed)
        self.per_record = per_record
        self.overhead = overhead
        self._free: list[float] = [0.0] * servers
        self._calls: list[tuple[float, int, Call]] = []
        self._order = itertools.count()

    def set_servers(self, servers: int, now: float) -> None:
        """The downstream loses or gains servers from ``now`` on."""
        busy = sorted(self._free)
        self._free = sorted(busy[-servers:] if servers <= len(busy) else busy)
        while len(self._free) < servers:
            self._free.append(now)
        heapq.heapify(self._free)
        self.servers = servers

    def start(self, now: float, records: int) -> None:
        """A call of ``records`` records starts at ``now``."""
        begins = max(now, heapq.heappop(self._free))
        # +-10 % per call, as a real server varies; without it calls finish in lockstep.
        took = (self.overhead + self.per_record * records) * self._jitter.uniform(0.9, 1.1)
        call = Call(now, records, finish=begins + took)
        heapq.heappush(self._free, call.finish)
        heapq.heappush(self._calls, (call.finish, next(self._order), call))

    def next_finished(self) -> Call:
        """The call that finishes first (the driver moves the clock to its ``finish``)."""
        return heapq.heappop(self._calls)[2]

    @property
    def in_flight(self) -> int:
        """Calls started and not finished."""
        return len(self._calls)


class SharedCpu:
    """The sidecar's own CPU is the limit: every call in flight shares one core.

    A call needs ``overhead + per_record * records`` CPU-seconds and gets ``1 / n`` of the
    core while ``n`` calls are in flight, so more concurrency makes each call slower and buys
    no throughput.
    """

    def __init__(self, per_record: float, overhead: float = 0.0005) -> None:
        self.per_record = per_record
        self.overhead = overhead
        self._calls: list[Call] = []
        self._now = 0.0

    def _advance(self, now: float) -> None:
        if self._calls and now > self._now:
            share = (now - self._now) / len(self._calls)
            for call in self._calls:
                call.work -= share
        self._now = now

    def start(self, now: float, records: int) -> None:
        """A call of ``records`` records starts at ``now``."""
        self._advance(now)
        self._calls.append(Call(now, records, work=self.overhead + self.per_record * records))

    def next_finished(self) -> Call:
        """The call that finishes first, its ``finish`` set."""
        first = min(self._calls, key=lambda call: call.work)
        finish = self._now + max(0.0, first.work) * len(self._calls)
        self._advance(finish)
        self._calls.remove(first)
        first.finish = finish
        return first

    @property
    def in_flight(self) -> int:
        """Calls started and not finished."""
        return len(self._calls)


Model = ParallelServers | SharedCpu


@dataclass
class Driver:
    """Keeps the limiter's calls in flight against a model, work always waiting."""

    model: Model
    tuning: LimitTuning = field(default_factory=LimitTuning)
    batch: int = 1000
    now: float = 0.0
    failing: bool = False
    limits: list[int] = field(default_factory=list)
    max_in_flight_over_limit: int = 0

    def __post_init__(self) -> None:
        self.limiter = AdaptiveLimit(self.tuning, clock=lambda: self.now)

    def run(self, calls: int) -> None:
        """Finish ``calls`` more calls."""
        for _ in range(calls):
            while self.model.in_flight < self.limiter.limit:
                self.model.start(self.now, self.batch)
            self.max_in_flight_over_limit = max(
                self.max_in_flight_over_limit, self.model.in_flight - self.limiter.limit
            )
            in_flight = self.model.in_flight
            call = self.model.next_finished()
            self.now = call.finish
            self.limiter.on_call(
                call.records, call.finish - call.started, self.failing, in_flight, True
            )
            self.limits.append(self.limiter.limit)

    def settled_limits(self, last: int) -> list[int]:
        """The limit after each of the last ``last`` calls."""
        return self.limits[-last:]
