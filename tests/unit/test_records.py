"""Grouping consumed records into ordering units, as ``Ingest`` does on the poll thread."""

from __future__ import annotations

import threading
from collections.abc import Hashable

from hypothesis import given
from hypothesis import strategies as st

from tagging_sidecar.config import InputFormat, Ordering, TombstonePolicy
from tagging_sidecar.decode import decoder_for
from tagging_sidecar.kafka.inflight import InFlight
from tagging_sidecar.kafka.ingest import WHOLE, Ingest
from tagging_sidecar.kafka.outcomes import OutcomeRouter, Tally
from tagging_sidecar.kafka.partitions import PartitionStates
from tagging_sidecar.kafka.records import Chunk, Record
from tagging_sidecar.observe.metrics import Metrics

from ..sim.kafka import FakeBroker, FakeConsumer, FakeMessage
from ..sim.world import record_value

KEYS = [None, b"a", b"b", b"c", b"d", b"e"]


def _ingest(ordering: Ordering, lanes: int) -> tuple[Ingest, PartitionStates, InFlight]:
    broker = FakeBroker()
    broker.create("t", 3)
    states = PartitionStates(FakeConsumer(broker))
    states.assign({("t", p): (None, frozenset()) for p in range(3)})
    inflight = InFlight(10_000, 1 << 30)
    metrics, tally = Metrics(), Tally()
    router = OutcomeRouter(
        partitions=states,
        inflight=inflight,
        dead_letters=None,  # an undecodable record halts its partition
        metrics=metrics,
        tally=tally,
        cancel=threading.Event(),
    )
    ingest = Ingest(
        decode=decoder_for(InputFormat.PROTOBUF, 1 << 20),
        tombstones=TombstonePolicy.SKIP,
        ordering=ordering,
        lanes=lanes,
        partitions=states,
        inflight=inflight,
        router=router,
        metrics=metrics,
        tally=tally,
    )
    return ingest, states, inflight


messages_spec = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.sampled_from(KEYS),
        st.sampled_from(["ok"] * 8 + ["poison", "tombstone"]),
    ),
    max_size=60,
)


def _records(chunk: Chunk) -> list[Record]:
    """The chunk's records, checking that its columns agree with the messages they came from."""
    made = [chunk.record(index) for index in range(len(chunk))]
    assert [m.offset() for m in chunk.messages] == chunk.offsets
    assert [m.value() for m in chunk.messages] == chunk.payloads
    assert sum(map(len, chunk.payloads)) == chunk.size
    return made


@given(
    batches=st.lists(messages_spec, min_size=1, max_size=3),
    ordering=st.sampled_from(list(Ordering)),
    lanes=st.integers(1, 8),
)
def test_chunks_keep_every_unit_in_offset_order_and_lose_nothing_sendable(
    batches: list[list[tuple[int, bytes | None, str]]], ordering: Ordering, lanes: int
) -> None:
    ingest, states, inflight = _ingest(ordering, lanes)
    next_offset = [0, 0, 0]
    halted: set[int] = set()
    expected: list[tuple[int, int]] = []  # (partition, offset) of every record to send
    units: list[tuple[Hashable, Chunk]] = []
    for spec in batches:
        messages = []
        for partition, key, kind in spec:
            offset = next_offset[partition]
            next_offset[partition] += 1
            messages.append(FakeMessage("t", partition, offset, key, record_value("r", kind)))
            if partition in halted:
                continue
            if kind == "poison":
                halted.add(partition)  # no dead-letter topic: the partition stops there
            elif kind == "ok":
                expected.append((partition, offset))
        units += ingest(messages)
    records = {id(chunk): _records(chunk) for _, chunk in units}
    sent = [(r.partition, r.offset) for _, chunk in units for r in records[id(chunk)]]
    assert sorted(sent) == sorted(expected)
    assert inflight.records == len(sent)  # a halted record is settled at once
    home: dict[tuple[int, bytes | None], Hashable] = {}
    last_of_unit: dict[Hashable, int] = {}
    for unit, chunk in units:
        assert len({(r.topic, r.partition) for r in records[id(chunk)]}) == 1
        offsets = [r.offset for r in records[id(chunk)]]
        assert offsets == sorted(offsets)
        head = records[id(chunk)][0]
        if ordering is Ordering.UNORDERED:
            assert unit is None
            continue
        if ordering is Ordering.PARTITION:
            assert unit == ("t", head.partition)
        # Later chunks of a unit carry later offsets: the pool sends a unit's chunks in order.
        assert last_of_unit.get(unit, -1) < offsets[0]
        last_of_unit[unit] = offsets[-1]
        for r in records[id(chunk)]:
            assert home.setdefault((r.partition, r.key), unit) == unit
    if ordering is Ordering.KEY:
        assert len({unit for unit, _ in units}) <= 3 * (lanes + 1)
    for partition in halted:
        assert states.halted(("t", partition))


@given(spec=messages_spec, ordering=st.sampled_from(list(Ordering)), lanes=st.integers(1, 8))
def test_a_whole_read_split_later_gives_the_units_of_a_split_read(
    spec: list[tuple[int, bytes | None, str]], ordering: Ordering, lanes: int
) -> None:
    # A read kept whole (for a call on the poll thread) and split when it goes to the workers
    # after all must give exactly the chunks the read would have given split at once.
    messages = [
        FakeMessage("t", partition, offset, key, record_value("r", kind))
        for offset, (partition, key, kind) in enumerate(spec)
    ]
    at_once, _, _ = _ingest(ordering, lanes)
    later, _, inflight = _ingest(ordering, lanes)
    split = at_once(messages)
    whole = later(messages, whole=True)
    if ordering is Ordering.KEY:
        # One chunk per partition, whatever the keys (every chunk costs on its way back), or
        # one more after each record settled at once (null, undecodable), which ends a run.
        assert all(unit is WHOLE for unit, _ in whole)
        settled = sum(kind != "ok" for _, _, kind in spec)
        assert len(whole) <= len({partition for partition, _, _ in spec}) + settled
        whole = [part for _, chunk in whole for part in later.split(chunk)]
    else:
        assert WHOLE not in {unit for unit, _ in whole}

    def shape(units: list[tuple[Hashable, Chunk]]) -> list[tuple[Hashable, list[int], int]]:
        return sorted(((unit, chunk.offsets, chunk.size) for unit, chunk in units), key=repr)

    assert shape(whole) == shape(split)
    for _, chunk in whole:
        _records(chunk)  # columns agree with the messages
    assert inflight.records == sum(len(chunk) for _, chunk in split)
