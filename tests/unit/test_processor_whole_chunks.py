"""Where the pool's limit is one call, or two and no more than the partitions with records in
flight, a read goes to the workers in one chunk per partition (a *whole* chunk); where more
calls may run side by side, in its ordering units. A partition's
whole chunks and its unit chunks are never in the pool together, so every key keeps its order
across the switch.

The real processor over the simulated world (``tests/sim``), as in
``test_processor_caught_up.py``: the test sets the pool's limit and runs its chunks.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tagging_sidecar.kafka.ingest import whole_unit

from ..sim.kafka import TP, FakeBroker
from ..sim.world import Sidecar
from .test_processor_caught_up import KEYS, _forward_all, _per_key, _produce_keyed, _world

P0: TP = ("t", 0)
P1: TP = ("t", 1)


def _in_key_order(sidecar: Sidecar, broker: FakeBroker) -> bool:
    """Whether the server stored every key's records in offset order."""
    grouped = _per_key(sidecar.server.stored, broker)
    return all(ids == sorted(ids, key=lambda i: int(i.split("-")[1])) for ids in grouped.values())


def test_with_a_limit_of_one_call_a_backlog_goes_to_the_workers_one_chunk_per_partition() -> None:
    broker, sidecar, _ = _world()
    sidecar.pool.limit = 1
    _produce_keyed(broker, P0, KEYS * 15)  # 150 records: more than a read (100)
    _produce_keyed(broker, P1, KEYS[:4])
    sidecar.processor.step()  # a read of 100: partition 0's first
    sidecar.processor.step()  # the rest of both
    assert sidecar.pool.here_calls == 0
    units = [unit for unit, _ in sidecar.pool.queued]
    # Two reads of partition 0 and one of partition 1, one chunk each.
    assert sorted(map(str, units)) == sorted(map(str, [whole_unit(P0)] * 2 + [whole_unit(P1)]))
    assert all(
        chunk.offsets == list(range(chunk.offsets[0], chunk.offsets[0] + len(chunk)))
        for _, chunk in sidecar.pool.queued
    )
    for _ in range(5):
        _forward_all(sidecar)
        sidecar.processor.step()
    assert sorted(sidecar.server.stored) == sorted(
        [f"0-{i}" for i in range(150)] + [f"1-{i}" for i in range(4)]
    )
    assert _in_key_order(sidecar, broker)


def test_with_more_calls_allowed_a_backlog_goes_in_its_ordering_units() -> None:
    broker, sidecar, _ = _world()
    sidecar.pool.limit = 2
    _produce_keyed(broker, P0, KEYS * 15)
    sidecar.processor.step()
    units = [unit for unit, _ in sidecar.pool.queued]
    assert whole_unit(P0) not in units and len(units) == len(set(units)) > 1


def test_with_no_more_calls_allowed_than_busy_partitions_reads_stay_whole() -> None:
    # Two calls may run side by side, and two partitions have records in flight: a chunk per
    # partition lets both calls run, so the reads are not split into key lanes.
    broker, sidecar, _ = _world()
    sidecar.pool.limit = 1
    for tp in (P0, P1):
        _produce_keyed(broker, tp, KEYS)
    sidecar.processor.step()
    sidecar.pool.limit = 2
    for tp in (P0, P1):
        _produce_keyed(broker, tp, KEYS)
    sidecar.processor.step()
    units = [str(unit) for unit, _ in sidecar.pool.queued]
    assert sorted(units) == sorted(map(str, [whole_unit(P0), whole_unit(P1)] * 2))
    _forward_all(sidecar)
    sidecar.processor.step()
    assert len(sidecar.server.stored) == 40 and _in_key_order(sidecar, broker)


def test_a_limit_above_two_calls_splits_reads_however_many_partitions_are_busy() -> None:
    # A limit that grew past two calls belongs to a slow downstream: lanes, not a switch back
    # and forth as it moves around the number of busy partitions.
    broker, sidecar, _ = _world(partitions=4)
    sidecar.pool.limit = 3
    tps: list[TP] = [("t", p) for p in range(4)]
    for tp in tps:
        _produce_keyed(broker, tp, KEYS)
    sidecar.processor.step()
    while any(chunk.tp == P0 for _, chunk in sidecar.pool.queued):
        sidecar.pool.run(next(i for i, (_, c) in enumerate(sidecar.pool.queued) if c.tp == P0))
    _produce_keyed(broker, P0, KEYS)
    sidecar.processor.step()  # partition 0 is free; three partitions are busy, the limit is 3
    assert sidecar.inflight.partitions() == 4
    units = [unit for unit, chunk in sidecar.pool.queued if chunk.tp == P0]
    assert units and whole_unit(P0) not in units


def test_a_raised_limit_splits_a_partitions_reads_only_once_its_whole_chunks_are_done() -> None:
    broker, sidecar, _ = _world()
    sidecar.pool.limit = 1
    _produce_keyed(broker, P0, KEYS)
    sidecar.processor.step()
    assert [unit for unit, _ in sidecar.pool.queued] == [whole_unit(P0)]
    sidecar.pool.limit = 2
    _produce_keyed(broker, P0, KEYS)
    sidecar.processor.step()
    # The new records would overtake the whole chunk in a unit of their own: they wait.
    assert [unit for unit, _ in sidecar.pool.queued] == [whole_unit(P0)]
    assert sidecar.inflight.records == 20
    sidecar.pool.run(0)
    sidecar.processor.step()
    units = [unit for unit, _ in sidecar.pool.queued]
    assert whole_unit(P0) not in units and len(units) > 1
    _forward_all(sidecar)
    sidecar.processor.step()
    assert sorted(sidecar.server.stored) == sorted(f"0-{i}" for i in range(20))
    assert _in_key_order(sidecar, broker)


def test_a_full_read_split_while_whole_chunks_are_in_the_pool_waits_behind_them() -> None:
    broker, sidecar, _ = _world()
    sidecar.pool.limit = 1
    _produce_keyed(broker, P0, KEYS)
    sidecar.processor.step()
    sidecar.pool.limit = 2
    _produce_keyed(broker, P0, KEYS * 15)
    sidecar.processor.step()  # a full read (100 of 150): more is ready, so it is split at once
    assert [unit for unit, _ in sidecar.pool.queued] == [whole_unit(P0)]
    sidecar.pool.run(0)
    for _ in range(4):
        sidecar.processor.step()
        assert whole_unit(P0) not in [unit for unit, _ in sidecar.pool.queued]
        _forward_all(sidecar)
    assert sorted(sidecar.server.stored) == sorted(f"0-{i}" for i in range(160))
    assert _in_key_order(sidecar, broker)


def test_a_lowered_limit_sends_whole_chunks_only_once_no_unit_chunk_is_left() -> None:
    broker, sidecar, _ = _world()
    _produce_keyed(broker, P0, KEYS)
    sidecar.processor.step()
    split = [unit for unit, _ in sidecar.pool.queued]
    assert whole_unit(P0) not in split
    sidecar.pool.limit = 1
    _produce_keyed(broker, P0, KEYS)
    sidecar.processor.step()
    # Unit chunks of the partition are still queued: the new read goes behind them, split.
    assert whole_unit(P0) not in [unit for unit, _ in sidecar.pool.queued]
    _forward_all(sidecar)
    sidecar.processor.step()
    _produce_keyed(broker, P0, KEYS)
    sidecar.processor.step()
    assert [unit for unit, _ in sidecar.pool.queued] == [whole_unit(P0)]
    _forward_all(sidecar)
    sidecar.processor.step()
    assert sorted(sidecar.server.stored) == sorted(f"0-{i}" for i in range(30))
    assert _in_key_order(sidecar, broker)


NO_KEYS: list[bytes | None] = []
#: (what, a number, keys): produce keys on partition n, set the limit to n, step, or run the
#: n-th runnable chunk
Action = tuple[str, int, list[bytes | None]]
ACTIONS = st.one_of(
    st.tuples(
        st.just("produce"),
        st.integers(0, 1),
        st.lists(st.sampled_from(KEYS), min_size=1, max_size=120),
    ),
    st.tuples(st.just("limit"), st.sampled_from([1, 2]), st.just(NO_KEYS)),
    st.tuples(st.just("step"), st.just(0), st.just(NO_KEYS)),
    st.tuples(st.just("run"), st.integers(0, 1000), st.just(NO_KEYS)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(ACTIONS, max_size=40))
def test_every_key_keeps_its_order_however_the_limit_moves(
    actions: list[Action],
) -> None:
    broker, sidecar, _ = _world()
    produced: list[str] = []
    for what, number, keys in actions:
        if what == "produce":
            tp: TP = ("t", number)
            first = len(broker.logs[tp])
            _produce_keyed(broker, tp, keys)
            produced += [f"{number}-{first + i}" for i in range(len(keys))]
        elif what == "limit":
            sidecar.pool.limit = number
        elif what == "step":
            sidecar.processor.step()
        else:
            runnable = sidecar.pool.runnable()
            if runnable:
                # Any unit's first chunk may finish first, as with calls side by side.
                sidecar.pool.run(runnable[number % len(runnable)])
        # Never both kinds of chunk of one partition in the pool at once.
        for tp in (P0, P1):
            queued = {unit for unit, chunk in sidecar.pool.queued if chunk.tp == tp}
            assert not (whole_unit(tp) in queued and len(queued) > 1)
    for _ in range(100):
        sidecar.processor.step()
        _forward_all(sidecar)
        if len(sidecar.server.stored) == len(produced) and not sidecar.inflight.records:
            break
    assert sorted(sidecar.server.stored) == sorted(produced)
    assert _in_key_order(sidecar, broker)
