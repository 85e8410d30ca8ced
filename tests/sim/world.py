"""The real stream processor wired to deterministic fakes: Kafka, the pool, the downstream,
the dead-letter producer and the clock. Nothing runs on another thread and nothing sleeps:
time moves only when the processor waits (``Outcomes.take`` with a timeout) or a test says so,
and pool batches complete only when a test (or a wait) runs them, in any order it picks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field

from tagging_sidecar.config import GrpcSettings, InputFormat, Ordering, TombstonePolicy
from tagging_sidecar.decode import decoder_for
from tagging_sidecar.errors import SidecarError
from tagging_sidecar.forward import HavilahClient
from tagging_sidecar.forward.dispatcher import ForwardingDispatcher
from tagging_sidecar.kafka.commit import Committer
from tagging_sidecar.kafka.inflight import InFlight
from tagging_sidecar.kafka.ingest import Ingest
from tagging_sidecar.kafka.outcomes import Outcome, OutcomeRouter, Outcomes, Tally
from tagging_sidecar.kafka.partitions import PartitionStates
from tagging_sidecar.kafka.processor import StreamProcessor, Timing
from tagging_sidecar.kafka.records import Chunk, Record
from tagging_sidecar.kafka.stages import CommitWaits, TimedDispatcher
from tagging_sidecar.observe.health import HealthState
from tagging_sidecar.observe.metrics import Metrics
from tagging_sidecar.pool import PoolStats, Rejected
from tagging_sidecar.produce import encode, make_record

from .downstream import FakeServer
from .kafka import FakeBroker, FakeConsumer


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass."""
        self.now += seconds


class ManualPool:
    """The pool's protocol with batches run on demand by the real forwarding dispatcher.

    Chunks of one key are run in the order they were offered, as the real pool does; chunks of
    different keys complete in whatever order the test picks.
    """

    def __init__(
        self,
        dispatcher: TimedDispatcher,
        on_done: Callable[[list[Chunk], list[Rejected[Chunk]]], None],
        capacity: int,
        caller: TimedDispatcher,
    ) -> None:
        self._dispatcher = dispatcher
        self._caller = caller
        #: whether ``call_here`` calls (the real pool: idle, and the last call was quick)
        self.caller_runs = False
        #: calls ``call_here`` made
        self.here_calls = 0
        #: the chunks of each call ``call_here`` made
        self.here_chunks: list[list[Chunk]] = []
        self._on_done = on_done
        self._capacity = capacity
        self.queued: list[tuple[Hashable | None, Chunk]] = []
        self.stopped = False
        #: offers still to refuse per key, as a worker busy with that key would
        self.refusals: dict[Hashable | None, int] = {}
        #: the ``waited`` of every offer, in order
        self.waited: list[float] = []
        #: calls allowed in flight (the real pool's adaptive limit); 1 makes the processor
        #: send whole chunks
        self.limit = 2

    def offer(
        self, item: Chunk, key: Hashable | None = None, weight: int = 1, waited: float = 0.0
    ) -> bool:
        """Queue ``item`` if fewer than ``capacity`` records wait (and ``key`` is not busy)."""
        self.waited.append(waited)
        if self.stopped:
            return False
        if self.refusals.get(key, 0) > 0:
            self.refusals[key] -= 1
            return False
        if sum(len(c) for _, c in self.queued) + weight > self._capacity and self.queued:
            return False
        self.queued.append((key, item))
        return True

    def call_here(self, items: Sequence[Chunk], weight: int) -> bool:
        """As the real pool: while allowed and nothing is queued, one call of every chunk on
        the caller's thread, one attempt; a batch that fails is handed back (False), and the
        caller offers it to the workers."""
        if not self.caller_runs or self.queued or self.stopped:
            return False
        chunks = list(items)
        self.here_calls += 1
        self.here_chunks.append(chunks)
        try:
            rejected = list(self._caller.process(chunks))
        except SidecarError:
            return False
        self._on_done(chunks, rejected)
        return True

    def holds(self, keys: Iterable[Hashable]) -> bool:
        """Whether a chunk of any of ``keys`` is queued."""
        wanted = set(keys)
        return any(key in wanted for key, _ in self.queued)

    def runnable(self) -> list[int]:
        """Indexes of queued chunks that may run now (first of their key)."""
        seen: set[Hashable | None] = set()
        ready = []
        for index, (key, _) in enumerate(self.queued):
            if key is None or key not in seen:
                ready.append(index)
            if key is not None:
                seen.add(key)
        return ready

    def run(self, index: int) -> None:
        """Send one queued chunk through the dispatcher and report its result."""
        _, chunk = self.queued.pop(index)
        try:
            rejected = list(self._dispatcher.process([chunk]))
        except SidecarError as exc:  # as the real pool does: the whole batch failed with it
            rejected = [Rejected(chunk, exc)]
        self._on_done([chunk], rejected)

    def withdraw(self, predicate: Callable[[Chunk], bool]) -> list[Chunk]:
        """Take back queued chunks ``predicate`` selects."""
        taken = [chunk for _, chunk in self.queued if predicate(chunk)]
        self.queued = [(k, c) for k, c in self.queued if not predicate(c)]
        return taken

    def stop(self, drain: bool = True, timeout: float | None = None) -> list[Chunk]:
        """Run everything queued (a complete drain)."""
        while drain and self.queued:
            self.run(0)
        self.stopped = True
        left = [chunk for _, chunk in self.queued]
        self.queued = []
        return left

    def stats(self) -> PoolStats:
        """Gauges."""
        backlog = sum(len(c) for _, c in self.queued)
        return PoolStats(1, 1, backlog, 0, 0, 0, 0)


@dataclass
class FakeDeadLetters:
    """A dead-letter producer whose acknowledgements come when the test releases them."""

    on_done: Callable[[Record, str | None], None]
    topic: str = "dlq"
    waiting: list[Record] = field(default_factory=list)
    acked: list[Record] = field(default_factory=list)

    def send(self, record: Record, error: BaseException) -> None:
        self.waiting.append(record)

    def ack(self, count: int) -> None:
        """Acknowledge the oldest ``count`` writes."""
        for record in self.waiting[:count]:
            self.acked.append(record)
            self.on_done(record, None)
        del self.waiting[:count]

    def poll(self, timeout: float = 0.0) -> None:
        return None

    def flush(self, timeout: float) -> int:
        self.ack(len(self.waiting))
        return 0


class SimOutcomes(Outcomes):
    """The outcome channel; a wait lets simulated time pass and the pool make progress."""

    def __init__(self, on_wait: Callable[[float], None]) -> None:
        super().__init__()
        self._on_wait = on_wait

    def take(self, timeout: float = 0.0) -> list[Outcome]:
        """Whatever arrived; a wait first advances the world by ``timeout``."""
        if timeout > 0:
            self._on_wait(timeout)
        return super().take()


@dataclass
class Limits:
    """The bounds the simulated sidecar runs with."""

    max_records: int = 6
    max_bytes: int = 1 << 20
    consume_batch: int = 3
    #: larger than ``max_records``, so that the in-flight limit is what binds
    pool_capacity: int = 40
    #: records held or delivered without a landed commit before reading stops
    max_uncommitted: int = 8
    #: pause as soon as the pipeline is full, so pauses meet rebalances often
    pause_after: float = 0.0
    #: how long a poll blocks with nothing to read and nothing in flight
    idle_poll: float = 0.0
    #: seconds between the committer's timed commits
    commit_interval: float = 1.0
    #: how long a poll gathers a trickle while records are in flight (the pool's linger)
    gather: float = 0.005


class Sidecar:
    """One simulated sidecar process: a consumer and the real processor over fakes."""

    def __init__(
        self, broker: FakeBroker, server: FakeServer, clock: FakeClock, limits: Limits
    ) -> None:
        self.clock = clock
        self.limits = limits
        self.server = server
        self.consumer = FakeConsumer(broker)
        self.consumer.on_wait = self.clock.advance
        self.outcomes = SimOutcomes(self.wait)
        self.metrics = Metrics()
        self.tally = Tally()
        self.cancel = threading.Event()
        settings = GrpcSettings(retry_initial_backoff=1e-6, retry_max_backoff=1e-6, max_attempts=3)
        client = HavilahClient(settings, server, cancel=self.cancel)
        # The simulated clock stands in for the wall clock too: the fake broker's Kafka
        # timestamps are 1000 s + the offset in milliseconds, where the clock starts.
        self.pool = ManualPool(
            TimedDispatcher(ForwardingDispatcher(client, 1.0), self.metrics, clock, wall=clock),
            self.outcomes.batch_done,
            limits.pool_capacity,
            TimedDispatcher(
                ForwardingDispatcher(client, 1.0, once_within=1.0), self.metrics, clock, wall=clock
            ),
        )
        self.dlq = FakeDeadLetters(self.outcomes.dead_letter_done)
        self.partitions = PartitionStates(self.consumer)
        self.inflight = InFlight(limits.max_records, limits.max_bytes, limits.max_uncommitted)
        self.commit_waits = CommitWaits(self.metrics, clock)
        router = OutcomeRouter(
            partitions=self.partitions,
            inflight=self.inflight,
            dead_letters=self.dlq,
            metrics=self.metrics,
            tally=self.tally,
            cancel=self.cancel,
            commit_waits=self.commit_waits,
        )
        committer = Committer(
            consumer=self.consumer,
            partitions=self.partitions,
            metrics=self.metrics,
            interval=limits.commit_interval,
            every=7,
            clock=clock,
            inflight=self.inflight,
            commit_waits=self.commit_waits,
        )
        self.consumer.on_commit = committer.on_commit
        self.health = HealthState(stall_timeout=60, tick_timeout=60, clock=clock)
        self.processor = StreamProcessor(
            consumer=self.consumer,
            pool=self.pool,
            outcomes=self.outcomes,
            partitions=self.partitions,
            inflight=self.inflight,
            router=router,
            ingest=Ingest(
                decode=decoder_for(InputFormat.PROTOBUF, 1 << 20),
                tombstones=TombstonePolicy.SKIP,
                ordering=Ordering.KEY,
                lanes=4,
                partitions=self.partitions,
                inflight=self.inflight,
                router=router,
                metrics=self.metrics,
                tally=self.tally,
            ),
            committer=committer,
            health=self.health,
            metrics=self.metrics,
            tally=self.tally,
            cancel=self.cancel,
            dead_letters=self.dlq,
            timing=Timing(
                consume_batch=limits.consume_batch,
                idle_poll=limits.idle_poll,
                pause_after=limits.pause_after,
                grace=5.0,
                gather=limits.gather,
            ),
            clock=clock,
        )
        self.consumer.subscribe(
            ["t"],
            on_assign=self.processor.on_assign,
            on_revoke=self.processor.on_revoke,
            on_lost=self.processor.on_lost,
        )

    def wait(self, seconds: float) -> None:
        """Time passes while the processor waits: the pool finishes one batch, if any."""
        self.clock.now += seconds
        ready = self.pool.runnable()
        if ready:
            self.pool.run(ready[0])
        self.dlq.ack(1)


def record_value(record_id: str, kind: str) -> bytes | None:
    """The bytes of a produced record: valid, undecodable ("poison") or null ("tombstone")."""
    if kind == "poison":
        return b"\xff not a Tagging"
    if kind == "tombstone":
        return None
    record = make_record("s", 0)
    record.id = record_id
    return encode(record, InputFormat.PROTOBUF)
