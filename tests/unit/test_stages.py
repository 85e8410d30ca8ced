"""Per-stage timings and the record age at acknowledgement, with injected clocks.

The end-to-end cases drive the real stream processor over the simulation's fakes, whose one
clock stands in for the monotonic and the wall clock (its Kafka timestamps are 1000 s plus
the offset in milliseconds, where the clock starts), so every observed value is exact.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import pytest
from prometheus_client import generate_latest

from tagging_sidecar.errors import PermanentForwardError
from tagging_sidecar.kafka.commit import Committer
from tagging_sidecar.kafka.inflight import InFlight
from tagging_sidecar.kafka.outcomes import BatchDone, OutcomeRouter, Tally
from tagging_sidecar.kafka.partitions import PartitionStates
from tagging_sidecar.kafka.records import Chunk
from tagging_sidecar.kafka.stages import CommitWaits, TimedDispatcher
from tagging_sidecar.kafka.watermark import PartitionWatermark
from tagging_sidecar.observe.metrics import STAGES, Metrics
from tagging_sidecar.pool import EndOfWork, Rejected

from ..sim.downstream import FakeServer
from ..sim.kafka import FakeBroker, FakeConsumer, FakeMessage
from ..sim.world import FakeClock, Limits, Sidecar, record_value
from ..support.harness import histogram_quantile, stage_quantiles

T0 = ("t", 0)


def stage(metrics: Metrics, name: str, suffix: str = "sum") -> float | None:
    return metrics.registry.get_sample_value(
        f"tagging_sidecar_stage_seconds_{suffix}", {"stage": name}
    )


def ages(metrics: Metrics) -> tuple[float | None, float | None]:
    """(count, sum) of the record-age histogram."""
    get = metrics.registry.get_sample_value
    return (
        get("tagging_sidecar_record_age_seconds_count"),
        get("tagging_sidecar_record_age_seconds_sum"),
    )


def simulated(server: FakeServer, records: int, limits: Limits | None = None) -> Sidecar:
    broker = FakeBroker()
    broker.create("t", 1)
    for index in range(records):
        broker.append(T0, b"k", record_value(f"r{index}", "ok"))
    return Sidecar(broker, server, FakeClock(), limits or Limits())


# -- the whole way, through the real processor -------------------------------------------


def test_every_stage_of_a_call_is_timed_from_consume_to_commit() -> None:
    server = FakeServer()
    sidecar = simulated(server, 2)
    clock, processor, metrics = sidecar.clock, sidecar.processor, sidecar.metrics
    sidecar.pool.stopped = True  # the pool refuses: the chunk waits in the processor
    processor.step()  # consumed at 1000.0
    clock.now = 1000.25
    sidecar.pool.stopped = False
    processor.step()  # handed to the pool

    def slow_call() -> None:
        clock.now += 0.125

    server.hook = slow_call
    clock.now = 1000.75
    sidecar.pool.run(0)  # taken at 1000.75, acknowledged at 1000.875
    clock.now = 1001.5
    processor.step()  # applied; the commit interval is up: the commit goes out
    assert stage(metrics, "commit", "count") == 0
    clock.now = 1002.0
    processor.step()  # its result arrives inside consume()
    assert sidecar.consumer.broker.committed[T0][0] == 2
    for name, seconds in {
        "consumer_batch": 0.25,
        "pool_queue": 0.5,
        "call": 0.125,
        "commit": 2.0 - 0.875,
    }.items():
        assert stage(metrics, name, "count") == 1, name
        assert stage(metrics, name) == seconds, name
    # The age when the server acknowledged: its two records, stamped 1000.000 and 1000.001.
    assert ages(metrics) == pytest.approx((2, 0.875 + 0.874))


def test_the_record_age_is_taken_at_the_acknowledgement_not_when_it_is_applied() -> None:
    # Failed before the fix: the age was taken when the poll loop applied the result (10.0).
    sidecar = simulated(FakeServer(), 1)
    clock = sidecar.clock
    sidecar.processor.step()
    clock.now = 1000.5
    sidecar.pool.run(0)  # acknowledged at 1000.5
    clock.now = 1010.0
    sidecar.processor.step()  # applied 9.5 s later
    assert ages(sidecar.metrics) == (1, 0.5)


def test_a_rejected_record_has_no_age() -> None:
    # Failed before the fix: the rejected first record's age was observed as well.
    sidecar = simulated(FakeServer(reject_ids={"r0"}), 2)
    sidecar.processor.step()
    sidecar.clock.now = 1002.0
    sidecar.pool.run(0)
    sidecar.processor.step()
    assert ages(sidecar.metrics) == pytest.approx((1, 2.0 - 0.001))


def test_records_held_aside_while_full_count_from_their_own_consume() -> None:
    # Two records fill the pipeline; a third is polled and held aside until there is room.
    sidecar = simulated(FakeServer(), 2, Limits(max_records=2, consume_batch=2, pause_after=60.0))
    clock, processor, metrics = sidecar.clock, sidecar.processor, sidecar.metrics
    processor.step()  # two records consumed and handed on at 1000.0
    sidecar.consumer.broker.append(T0, b"k", record_value("r2", "ok"))
    clock.now = 1000.5
    processor.step()  # full: r2 is held at 1000.5; waiting for results lets the first call run
    assert stage(metrics, "consumer_batch", "count") == 1
    clock.now = 1001.0
    processor.step()  # room again: r2 is handed to the pool
    sidecar.pool.run(0)
    assert stage(metrics, "consumer_batch", "count") == 2
    assert stage(metrics, "consumer_batch") == 0.5  # 0 for the first call, 0.5 for r2


def test_a_call_with_nothing_acknowledged_is_not_timed() -> None:
    sidecar = simulated(FakeServer(reject_ids={"r0"}), 1)
    sidecar.processor.step()
    sidecar.pool.run(0)
    sidecar.processor.step()
    for name in STAGES:
        assert stage(sidecar.metrics, name, "count") == 0
    assert ages(sidecar.metrics) == (0, 0)
    assert sidecar.commit_waits.waiting() == 0


# -- the worker's dispatcher -------------------------------------------------------------


class Scripted:
    """A worker dispatcher that takes ``seconds`` of the clock and rejects what it is told."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds
        self.reject: set[int] = set()
        self.end = False
        self.lifecycle: list[str] = []

    def before(self) -> None:
        self.lifecycle.append("before")

    def process(self, batch: Sequence[Chunk]) -> Sequence[Rejected[Chunk]]:
        self.clock.now += self.seconds
        if self.end:
            raise EndOfWork
        return [
            Rejected(chunk.single(index), PermanentForwardError("no"))
            for chunk in batch
            for index, offset in enumerate(chunk.offsets)
            if offset in self.reject
        ]

    def after(self) -> None:
        self.lifecycle.append("after")


def chunk(offsets: list[int], consumed: float, offered: float, stamp: int = 5_000) -> Chunk:
    made = Chunk(("t", 0), PartitionWatermark(), consumed)
    for o in offsets:
        made.add(o, b"x", FakeMessage("t", 0, o, None, b"x", None, stamp + o))
    made.offered = offered
    return made


def test_the_dispatcher_stamps_and_times_the_first_chunk_of_a_batch() -> None:
    clock = FakeClock()
    metrics = Metrics()
    inner = Scripted(clock, 0.25)
    dispatcher = TimedDispatcher(inner, metrics, clock, wall=lambda: 6.0)
    first = chunk([0, 1], consumed=999.0, offered=999.5)
    second = chunk([7], consumed=999.75, offered=999.875, stamp=4_000)
    dispatcher.before()
    assert dispatcher.process([first, second]) == ()
    dispatcher.after()
    assert inner.lifecycle == ["before", "after"]
    assert (first.taken, first.acked) == (1000.0, 1000.25)
    assert stage(metrics, "consumer_batch") == 0.5
    assert stage(metrics, "pool_queue") == 0.5
    assert stage(metrics, "call") == 0.25
    # The oldest (the second chunk's, 4.007 s) and the newest (5.001 s) of the chunks' ends.
    assert ages(metrics) == pytest.approx((2, (6.0 - 4.007) + (6.0 - 5.001)))


def test_the_dispatcher_hands_rejections_back_as_chunks_and_ages_only_the_rest() -> None:
    clock = FakeClock()
    metrics = Metrics()
    inner = Scripted(clock, 0.0)
    inner.reject = {0, 2}
    dispatcher = TimedDispatcher(inner, metrics, clock, wall=lambda: 6.0)
    rejected = dispatcher.process([chunk([0, 1, 2], consumed=1000.0, offered=1000.0)])
    assert [type(r.item) for r in rejected] == [Chunk, Chunk]
    assert [r.item.offsets for r in rejected] == [[0], [2]]
    assert ages(metrics) == pytest.approx((1, 6.0 - 5.001))  # only offset 1 was acknowledged


def test_a_batch_handed_back_to_the_pool_is_not_timed() -> None:
    clock = FakeClock()
    metrics = Metrics()
    inner = Scripted(clock, 0.5)
    inner.end = True
    dispatcher = TimedDispatcher(inner, metrics, clock)
    first = chunk([0], consumed=1000.0, offered=1000.0)
    with pytest.raises(EndOfWork):
        dispatcher.process([first])
    assert stage(metrics, "call", "count") == 0
    assert first.acked == 1000.0  # not stamped: the next call that takes it stamps it


# -- the commit stage --------------------------------------------------------------------


def test_a_commit_times_every_call_it_covers_and_only_those() -> None:
    clock = FakeClock()
    metrics = Metrics()
    waits = CommitWaits(metrics, clock)
    watermark = PartitionWatermark()
    # Calls of one partition complete out of offset order (different lanes, workers).
    waits.acknowledged(T0, watermark, last_offset=9, acked=1000.0)
    waits.acknowledged(T0, watermark, last_offset=4, acked=1000.5)
    clock.now = 1001.0
    waits.committed(T0, watermark, position=5)  # covers offsets 0-4 only
    assert (stage(metrics, "commit", "count"), stage(metrics, "commit")) == (1, 0.5)
    clock.now = 1003.0
    waits.committed(T0, watermark, position=5)  # the same position again: nothing new
    waits.committed(T0, watermark, position=10)
    assert (stage(metrics, "commit", "count"), stage(metrics, "commit")) == (2, 3.5)
    assert waits.waiting() == 0


def test_calls_of_an_earlier_assignment_are_never_timed() -> None:
    clock = FakeClock()
    metrics = Metrics()
    waits = CommitWaits(metrics, clock)
    before, after = PartitionWatermark(), PartitionWatermark()
    waits.acknowledged(T0, before, last_offset=3, acked=1000.0)
    waits.committed(T0, after, position=10)  # reset or assigned again meanwhile
    waits.acknowledged(("t", 1), before, last_offset=3, acked=1000.0)
    waits.forget([("t", 1)])  # revoked or lost
    waits.committed(("t", 1), before, position=10)
    assert stage(metrics, "commit", "count") == 0
    assert waits.waiting() == 0


def test_the_router_and_a_synchronous_commit_time_the_commit_stage() -> None:
    broker = FakeBroker()
    broker.create("t", 1)
    consumer = FakeConsumer(broker)
    consumer.assignment = {T0}
    states = PartitionStates(consumer)
    states.assign({T0: (None, frozenset())})
    clock = FakeClock()
    metrics = Metrics()
    waits = CommitWaits(metrics, clock)
    inflight = InFlight(100, 1 << 20)
    router = OutcomeRouter(
        partitions=states,
        inflight=inflight,
        dead_letters=None,
        metrics=metrics,
        tally=Tally(),
        cancel=threading.Event(),
        commit_waits=waits,
    )
    committer = Committer(
        consumer=consumer,
        partitions=states,
        metrics=metrics,
        interval=1.0,
        every=100,
        clock=clock,
        commit_waits=waits,
    )
    watermark = states.watermark(T0)
    assert watermark is not None
    records = Chunk(T0, watermark)
    for offset in range(3):
        records.add(offset, b"x", FakeMessage("t", 0, offset, None, b"x"))
        watermark.track(offset)
    inflight.admit(T0, 3, 3)
    records.acked = 1000.25
    router.apply(BatchDone([records], []))
    assert waits.waiting() == 1
    clock.now = 1001.0
    committer.commit_now({T0})  # as on revoke
    assert broker.committed[T0][0] == 3
    assert (stage(metrics, "commit", "count"), stage(metrics, "commit")) == (1, 0.75)


# -- reading it back: the harness's per-stage quantiles ----------------------------------


def test_stage_quantiles_interpolate_inside_the_bucket_like_histogram_quantile() -> None:
    metrics = Metrics()
    batch = metrics.stage_seconds.labels(stage="consumer_batch")
    for seconds in (0.0002, 0.0002, 0.0002, 0.0007):  # buckets (0.0001, 0.00025], (0.0005, 0.001]
        batch.observe(seconds)
    call = metrics.stage_seconds.labels(stage="call")
    for seconds in (0.3, 400.0):  # (0.25, 0.5] and above the highest bound, 300 s
        call.observe(seconds)
    text = generate_latest(metrics.registry).decode()

    median = stage_quantiles(text, 0.5)
    assert set(median) == set(STAGES)
    # Rank 2 of 4 falls in the first non-empty bucket, which holds 3: 2/3 of its width.
    assert median["consumer_batch"] == pytest.approx(0.0001 + (0.00025 - 0.0001) * 2 / 3)
    assert median["call"] == pytest.approx(0.5)  # rank 1 of 2: the whole (0.25, 0.5] bucket
    assert math.isnan(median["pool_queue"])  # nothing observed
    assert stage_quantiles(text, 1.0)["consumer_batch"] == pytest.approx(0.001)
    assert stage_quantiles(text, 0.99)["call"] == 300.0  # in +Inf: the highest finite bound
    with pytest.raises(ValueError, match="between 0 and 1"):
        stage_quantiles(text, 1.5)


def test_histogram_quantile_reads_an_unlabelled_histogram() -> None:
    metrics = Metrics()
    age = "tagging_sidecar_record_age_seconds"
    assert math.isnan(histogram_quantile(generate_latest(metrics.registry).decode(), age, 0.5))
    metrics.observe_record_ages([1_000, 3_000], now=4.0)  # 3 s in (2.5, 5], 1 s in (0.5, 1]
    text = generate_latest(metrics.registry).decode()
    assert histogram_quantile(text, age, 0.5) == pytest.approx(1.0)
    assert histogram_quantile(text, age, 0.75) == pytest.approx(2.5 + (5 - 2.5) * 0.5)
