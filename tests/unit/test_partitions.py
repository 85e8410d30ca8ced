"""Partition state and ingest without a broker: pauses, halts, offsets going backwards."""

from __future__ import annotations

from tagging_sidecar.config import InputFormat, Ordering, TombstonePolicy
from tagging_sidecar.decode import decoder_for
from tagging_sidecar.kafka.inflight import InFlight
from tagging_sidecar.kafka.ingest import Ingest
from tagging_sidecar.kafka.outcomes import OutcomeRouter, Tally
from tagging_sidecar.kafka.partitions import PartitionStates
from tagging_sidecar.observe.metrics import Metrics

from ..sim.kafka import FakeBroker, FakeConsumer, FakeMessage
from ..sim.world import record_value

T0 = ("t", 0)
T1 = ("t", 1)


def _consumer() -> FakeConsumer:
    broker = FakeBroker()
    broker.create("t", 2)
    return FakeConsumer(broker)


def test_a_partition_handed_back_after_a_pause_is_resumed() -> None:
    consumer = _consumer()
    states = PartitionStates(consumer)
    states.assign({T0: (None, frozenset()), T1: (None, frozenset())})
    states.pause_all()
    states.forget([T0])  # revoked while paused: librdkafka keeps its pause flag
    states.resume_all()
    assert T0 in consumer.paused
    states.assign({T0: (None, frozenset())})
    assert consumer.paused == set()


def test_a_partition_given_during_backpressure_is_paused_with_the_others() -> None:
    consumer = _consumer()
    states = PartitionStates(consumer)
    states.assign({T0: (None, frozenset())})
    states.pause_all()
    states.assign({T1: (None, frozenset())})
    assert consumer.paused == {T0, T1}
    states.resume_all()
    assert consumer.paused == set()


def test_a_halted_partition_stays_paused_until_it_is_assigned_again() -> None:
    consumer = _consumer()
    states = PartitionStates(consumer)
    states.assign({T0: (None, frozenset()), T1: (None, frozenset())})
    states.halt(T0, "bad record")
    states.pause_all()
    states.resume_all()
    assert consumer.paused == {T0}
    assert states.halted_reason() == "bad record"
    states.forget([T0])
    assert states.halted_reason() is None
    states.assign({T0: (None, frozenset())})
    assert consumer.paused == set()


def _ingest(states: PartitionStates, inflight: InFlight) -> Ingest:
    import threading

    router = OutcomeRouter(
        partitions=states,
        inflight=inflight,
        dead_letters=None,
        metrics=Metrics(),
        tally=Tally(),
        cancel=threading.Event(),
    )
    return Ingest(
        decode=decoder_for(InputFormat.PROTOBUF, 1 << 20),
        tombstones=TombstonePolicy.SKIP,
        ordering=Ordering.PARTITION,
        lanes=1,
        partitions=states,
        inflight=inflight,
        router=router,
        metrics=Metrics(),
        tally=Tally(),
    )


def test_offsets_going_backwards_reset_the_partition() -> None:
    states = PartitionStates(_consumer())
    states.assign({T0: (100, frozenset())})
    inflight = InFlight(1000, 1 << 20)
    ingest = _ingest(states, inflight)
    old = states.watermark(T0)
    chunks = ingest([FakeMessage("t", 0, 5, None, record_value("a", "ok"))])
    current = states.watermark(T0)
    assert current is not None and current is not old
    assert current.position() == 5
    assert [offset for _, chunk in chunks for offset in chunk.offsets] == [5]


def test_offsets_a_previous_owner_delivered_are_skipped_and_passed() -> None:
    states = PartitionStates(_consumer())
    states.assign({T0: (10, frozenset({11, 12}))})
    inflight = InFlight(1000, 1 << 20)
    ingest = _ingest(states, inflight)
    messages = [FakeMessage("t", 0, o, None, record_value(f"r{o}", "ok")) for o in (10, 11, 12, 13)]
    chunks = ingest(messages)
    assert [offset for _, chunk in chunks for offset in chunk.offsets] == [10, 13]
    watermark = states.watermark(T0)
    assert watermark is not None
    watermark.done(10)
    assert watermark.position() == 13
    watermark.done(13)
    assert watermark.position() == 14
    assert inflight.records == 2


def test_tombstones_are_skipped_and_committed_by_default() -> None:
    states = PartitionStates(_consumer())
    states.assign({T0: (None, frozenset())})
    ingest = _ingest(states, InFlight(1000, 1 << 20))
    chunks = ingest([FakeMessage("t", 0, 0, b"k", None), FakeMessage("t", 0, 1, b"k", None)])
    assert chunks == []
    watermark = states.watermark(T0)
    assert watermark is not None and watermark.position() == 2
