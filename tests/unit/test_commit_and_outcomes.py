"""The commit protocol, outcome routing, the failure-rate guard and the dead-letter producer,
each on its own and without a broker."""

from __future__ import annotations

import threading
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from hypothesis import given
from hypothesis import strategies as st

from tagging_sidecar.errors import PermanentForwardError, RetryableForwardError
from tagging_sidecar.kafka.commit import Committer
from tagging_sidecar.kafka.deadletter import DeadLetterProducer
from tagging_sidecar.kafka.guard import FailureRateGuard, _Window
from tagging_sidecar.kafka.inflight import InFlight
from tagging_sidecar.kafka.offsetmap import decode_done
from tagging_sidecar.kafka.outcomes import BatchDone, DeadLetterDone, OutcomeRouter, Tally
from tagging_sidecar.kafka.partitions import PartitionStates
from tagging_sidecar.kafka.records import Chunk, Record
from tagging_sidecar.observe.metrics import Metrics
from tagging_sidecar.pool import Rejected

from ..sim.kafka import FakeBroker, FakeConsumer, FakeMessage
from ..sim.world import FakeClock, FakeDeadLetters

T0 = ("t", 0)


def _world() -> tuple[FakeConsumer, PartitionStates, FakeClock]:
    broker = FakeBroker()
    broker.create("t", 1)
    consumer = FakeConsumer(broker)
    consumer.assignment = {T0}
    consumer.positions = {T0: 0}
    states = PartitionStates(consumer)
    states.assign({T0: (None, frozenset())})
    return consumer, states, FakeClock()


def _committer(consumer: FakeConsumer, states: PartitionStates, clock: FakeClock) -> Committer:
    committer = Committer(
        consumer=consumer, partitions=states, metrics=Metrics(), interval=1.0, every=3, clock=clock
    )
    consumer.on_commit = committer.on_commit
    return committer


def test_commits_come_by_time_or_by_count_one_at_a_time() -> None:
    consumer, states, clock = _world()
    committer = _committer(consumer, states, clock)
    watermark = states.watermark(T0)
    assert watermark is not None
    for offset in range(5):
        watermark.track(offset)
    watermark.done(0)
    committer.maybe_commit()
    assert consumer.broker.committed == {}  # neither due nor enough settled
    committer.settled(3)
    committer.maybe_commit()
    assert consumer.broker.committed[T0][0] == 1
    watermark.done(1)
    clock.now += 5
    committer.maybe_commit()  # the first is still in flight: no second one
    assert consumer.broker.committed[T0][0] == 1
    consumer.consume(1, 0)  # its result is served inside consume()
    committer.maybe_commit()
    assert consumer.broker.committed[T0][0] == 2


def test_a_commit_carries_the_done_offsets_above_its_position() -> None:
    consumer, states, clock = _world()
    committer = _committer(consumer, states, clock)
    watermark = states.watermark(T0)
    assert watermark is not None
    for offset in range(6):
        watermark.track(offset)
    for offset in (0, 2, 4):
        watermark.done(offset)
    committer.commit_now()
    position, metadata = consumer.broker.committed[T0]
    assert position == 1
    assert decode_done(position, metadata) == {2, 4}
    watermark.done(5)  # only the metadata changed: committed again
    committer.commit_now()
    assert decode_done(*consumer.broker.committed[T0]) == {2, 4, 5}


def test_a_failed_commit_is_sent_again() -> None:
    consumer, states, clock = _world()
    committer = _committer(consumer, states, clock)
    watermark = states.watermark(T0)
    assert watermark is not None
    watermark.track(0)
    watermark.track(1)
    watermark.done(1)
    consumer.fail_commits = True
    committer.commit_now()
    assert consumer.broker.committed == {}
    consumer.fail_commits = False
    committer.commit_now()
    assert decode_done(*consumer.broker.committed[T0]) == {1}


def test_a_commit_the_client_refuses_is_not_fatal() -> None:
    class Refusing(FakeConsumer):
        def commit(self, *, offsets: Any, asynchronous: bool = True) -> Any:
            raise KafkaException(KafkaError(KafkaError._NO_OFFSET))

    consumer, states, clock = _world()
    refusing = Refusing(consumer.broker)
    committer = _committer(refusing, states, clock)
    watermark = states.watermark(T0)
    assert watermark is not None
    watermark.track(0)
    watermark.done(0)
    committer.commit_now()
    committer.maybe_commit(force=True)
    assert not committer.in_flight


def _router(
    states: PartitionStates, dead: FakeDeadLetters | None, cancel: threading.Event | None = None
) -> tuple[OutcomeRouter, InFlight]:
    inflight = InFlight(100, 1 << 20)
    router = OutcomeRouter(
        partitions=states,
        inflight=inflight,
        dead_letters=dead,
        metrics=Metrics(),
        tally=Tally(),
        cancel=cancel or threading.Event(),
    )
    return router, inflight


def _records(states: PartitionStates, inflight: InFlight, offsets: list[int]) -> Chunk:
    watermark = states.watermark(T0)
    assert watermark is not None
    records = Chunk(T0, watermark)
    for offset in offsets:
        watermark.track(offset)
        records.add(offset, b"x", FakeMessage("t", 0, offset, None, b"x"))
    inflight.admit(T0, len(records), records.size)
    return records


def test_a_rejected_record_is_dead_lettered_and_done_only_once_acknowledged() -> None:
    _, states, _ = _world()
    router, inflight = _router(states, None)
    dead = FakeDeadLetters(lambda record, error: router.apply(DeadLetterDone(record, error)))
    router, inflight = _router(states, dead)
    records = _records(states, inflight, [0, 1])
    router.apply(BatchDone([records], [Rejected(records.single(0), PermanentForwardError("no"))]))
    watermark = states.watermark(T0)
    assert watermark is not None and watermark.position() == 0
    dead.ack(1)
    assert watermark.position() == 2
    assert inflight.records == 0


def test_a_failed_dead_letter_write_halts_the_partition() -> None:
    _, states, _ = _world()
    router, inflight = _router(states, FakeDeadLetters(lambda r, e: None))
    record = _records(states, inflight, [0]).record(0)
    router.apply(DeadLetterDone(record, "broker said no"))
    assert states.halted(T0)
    assert "broker said no" in (states.halted_reason() or "")
    assert inflight.records == 0


def test_late_results_of_a_partition_no_longer_owned_are_discarded() -> None:
    _, states, _ = _world()
    dead = FakeDeadLetters(lambda r, e: None)
    router, inflight = _router(states, dead)
    records = _records(states, inflight, [0, 1])
    states.forget([T0])
    router.apply(BatchDone([records], [Rejected(records.single(1), PermanentForwardError("no"))]))
    assert dead.waiting == []
    assert not states.halted(T0)
    assert inflight.records == 0


def test_a_local_failure_sends_the_records_again() -> None:
    _, states, _ = _world()
    router, inflight = _router(states, None)
    records = _records(states, inflight, [0, 1])
    router.apply(BatchDone([records], [Rejected(records, RuntimeError("bug"))]))
    assert [chunk.offsets for chunk in router.resend] == [[0], [1]]
    assert not states.halted(T0)


def test_retries_cut_short_by_shutdown_stay_uncommitted() -> None:
    _, states, _ = _world()
    cancel = threading.Event()
    dead = FakeDeadLetters(lambda r, e: None)
    router, inflight = _router(states, dead, cancel)
    records = _records(states, inflight, [0])
    cancel.set()
    router.apply(BatchDone([records], [Rejected(records, RetryableForwardError("stopping"))]))
    assert dead.waiting == []
    watermark = states.watermark(T0)
    assert watermark is not None and watermark.position() == 0
    assert inflight.records == 0


def test_the_guard_judges_decodes_and_deliveries_separately() -> None:
    guard = FailureRateGuard(window=100, max_ratio=0.5, min_samples=10)
    guard.decoded(failed=10)  # early decode failures, before any delivery result
    guard.decoded(ok=90)
    assert not guard.tripped()
    guard.delivered(failed=11, ok=9)
    assert guard.tripped()


@given(
    size=st.integers(1, 50),
    adds=st.lists(st.tuples(st.booleans(), st.integers(0, 120)), max_size=30),
)
def test_the_guard_window_holds_exactly_the_last_outcomes(
    size: int, adds: list[tuple[bool, int]]
) -> None:
    window = _Window(size)
    model: list[bool] = []
    for failed, count in adds:
        window.add(failed, count)
        model = (model + [failed] * count)[-size:]
        assert len(window) == len(model)
        assert window.failures == sum(model)


class _Producer:
    """librdkafka's producer as the dead-letter writer meets it."""

    def __init__(self, refuse_over: int | None = None, full_times: int = 0) -> None:
        self.refuse_over = refuse_over
        self.full_times = full_times
        self.sent: list[tuple[bytes | None, list[Any]]] = []
        self.polls = 0
        self._reports: list[Any] = []

    def produce(
        self, topic: str, value: bytes | None, key: Any, headers: Any, on_delivery: Any
    ) -> None:
        if self.full_times:
            self.full_times -= 1
            raise BufferError("queue full")
        if self.refuse_over is not None and len(value or b"") > self.refuse_over:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.sent.append((value, headers))
        self._reports.append(on_delivery)

    def poll(self, timeout: float) -> int:
        self.polls += 1
        reports, self._reports = self._reports, []
        for report in reports:
            report(None, None)
        return len(reports)

    def flush(self, timeout: float) -> int:
        self.poll(0)
        return 0


def _dead_letter(producer: _Producer) -> tuple[DeadLetterProducer, list[tuple[Record, str | None]]]:
    done: list[tuple[Record, str | None]] = []
    writer = DeadLetterProducer("dlq", producer, lambda r, e: done.append((r, e)), truncate_to=4)  # type: ignore[arg-type]
    return writer, done


def test_a_dead_letter_too_large_is_written_again_truncated() -> None:
    producer = _Producer(refuse_over=10)
    writer, done = _dead_letter(producer)
    _, states, _ = _world()
    record = Record("t", 0, 7, b"k", b"", states.watermark(T0), b"0123456789ABCDEF", [("h", b"v")])  # type: ignore[arg-type]
    writer.send(record, ValueError("bad"))
    writer.poll()
    [(value, headers)] = producer.sent
    assert value == b"0123"
    names = dict(headers)
    assert names["tagging.original.size"] == b"16"
    assert names["h"] == b"v"
    assert done == [(record, None)]


def test_a_full_dead_letter_queue_is_waited_on() -> None:
    producer = _Producer(full_times=3)
    writer, done = _dead_letter(producer)
    _, states, _ = _world()
    record = Record("t", 0, 1, None, b"", states.watermark(T0), None)  # type: ignore[arg-type]
    writer.send(record, ValueError("tombstone"))
    writer.poll()
    assert producer.sent[0][0] is None
    assert producer.polls >= 3
    assert done == [(record, None)]


# -- what a crash would deliver again: records awaiting their commit ---------------------------


def _bounded_world(
    max_uncommitted: int,
) -> tuple[FakeConsumer, PartitionStates, OutcomeRouter, InFlight, Committer]:
    consumer, states, clock = _world()
    inflight = InFlight(100, 1 << 20, max_uncommitted)
    router = OutcomeRouter(
        partitions=states,
        inflight=inflight,
        dead_letters=None,
        metrics=Metrics(),
        tally=Tally(),
        cancel=threading.Event(),
    )
    committer = Committer(
        consumer=consumer,
        partitions=states,
        metrics=Metrics(),
        interval=1.0,
        every=1,
        clock=clock,
        inflight=inflight,
    )
    consumer.on_commit = committer.on_commit
    return consumer, states, router, inflight, committer


def test_delivered_records_await_their_commit_until_it_lands() -> None:
    consumer, states, router, inflight, committer = _bounded_world(5)
    records = _records(states, inflight, [0, 1, 2])
    assert inflight.room() == 2  # three held
    router.apply(BatchDone([records], []))
    assert (inflight.records, inflight.awaiting) == (0, 3)
    assert inflight.room() == 2  # delivered, but a crash now would deliver them again
    committer.settled(3)
    committer.maybe_commit()
    assert inflight.awaiting == 3  # sent, not landed
    more = _records(states, inflight, [3])
    router.apply(BatchDone([more], []))
    consumer.consume(1, 0)  # the commit of offsets 0-2 lands
    assert consumer.broker.committed[T0][0] == 3
    assert inflight.awaiting == 1  # offset 3 came after that commit was built
    assert inflight.room(10) == 4


def test_a_failed_commit_confirms_nothing() -> None:
    consumer, states, router, inflight, committer = _bounded_world(5)
    records = _records(states, inflight, [0, 1])
    router.apply(BatchDone([records], []))
    consumer.fail_commits = True
    committer.commit_now()
    assert inflight.awaiting == 2
    consumer.fail_commits = False
    committer.commit_now()
    assert inflight.awaiting == 0


def test_a_full_window_stops_reading_until_the_commit_lands() -> None:
    consumer, states, router, inflight, committer = _bounded_world(2)
    records = _records(states, inflight, [0, 1])
    router.apply(BatchDone([records], []))
    assert inflight.full()
    committer.settled(2)
    committer.maybe_commit()
    assert inflight.full()
    consumer.consume(1, 0)
    assert not inflight.full()


def test_records_not_delivered_never_await_a_commit() -> None:
    """Rejected without a dead-letter topic (the partition halts), or of a partition that is
    no longer ours: neither can be delivered twice by a crash."""
    _consumer, states, router, inflight, _committer = _bounded_world(10)
    records = _records(states, inflight, [0, 1])
    router.apply(BatchDone([records], [Rejected(records.single(0), PermanentForwardError("no"))]))
    assert states.halted(T0)
    assert inflight.awaiting == 1  # offset 1 was delivered; offset 0 was not
    late = _records(states, inflight, [2])
    states.forget([T0])
    inflight.forget({T0})
    router.apply(BatchDone([late], []))
    assert (inflight.records, inflight.awaiting) == (0, 0)


def test_a_partition_with_nothing_to_commit_has_nothing_at_risk() -> None:
    _consumer, states, router, inflight, committer = _bounded_world(10)
    records = _records(states, inflight, [0])
    router.apply(BatchDone([records], []))
    committer.commit_now()
    assert inflight.awaiting == 0
    # Delivered again by nobody, committed already: a later commit finds nothing to send.
    inflight.delivered(T0, 1)  # e.g. counted after the commit that already covered it
    committer.maybe_commit(force=True)
    assert not committer.in_flight
    assert inflight.awaiting == 0
