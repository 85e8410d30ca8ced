"""How the processor reads when records trickle in: it gathers them while others are in
flight, and once it has read everything it commits what settled, then sleeps.

The real processor over the simulated world (``tests/sim``): a fake broker whose ``consume()``
lets simulated time pass when it would block, the real ingest, watermarks, router and
committer, and a pool whose chunks the test runs.
"""

from __future__ import annotations

import grpc
import pytest

from tagging_sidecar.kafka.ingest import WHOLE
from tagging_sidecar.kafka.processor import Timing

from ..sim.downstream import FakeServer
from ..sim.kafka import TP, FakeBroker
from ..sim.world import FakeClock, Limits, Sidecar, record_value

P0: TP = ("t", 0)
IDLE_POLL = 0.5  #: the processor's idle poll
INTERVAL = 60.0  #: the committer's interval: no timed commit happens in these tests


def _world(
    gather: float = Timing().gather, partitions: int = 2
) -> tuple[FakeBroker, Sidecar, list[float]]:
    """A joined sidecar and the list of the timeouts its ``consume()`` calls blocked for."""
    broker = FakeBroker()
    broker.create("t", partitions)
    limits = Limits(max_records=1000, consume_batch=100, max_uncommitted=0, gather=gather)
    limits.idle_poll, limits.commit_interval = IDLE_POLL, INTERVAL
    limits.pool_capacity = 10_000
    sidecar = Sidecar(broker, FakeServer(atomic=True), FakeClock(), limits)
    for _ in range(3):  # join the group
        sidecar.processor.step()
    waits: list[float] = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        sidecar.clock.advance(seconds)

    sidecar.consumer.on_wait = wait
    return broker, sidecar, waits


def _produce(broker: FakeBroker, count: int) -> None:
    for _ in range(count):
        broker.append(P0, None, record_value(f"r-{len(broker.logs[P0])}", "ok"))


def _produce_keyed(broker: FakeBroker, tp: TP, keys: list[bytes | None]) -> None:
    for key in keys:
        broker.append(tp, key, record_value(f"{tp[1]}-{len(broker.logs[tp])}", "ok"))


def _forward_all(sidecar: Sidecar) -> None:
    while sidecar.pool.queued:
        sidecar.pool.run(0)


def _commits(sidecar: Sidecar) -> int:
    value = sidecar.metrics.registry.get_sample_value(
        "tagging_sidecar_commit_duration_seconds_count"
    )
    return int(value or 0)


def test_what_settled_is_committed_once_reading_catches_up_not_at_the_next_interval() -> None:
    broker, sidecar, waits = _world()
    _produce(broker, 3)  # fewer than the commit cadence's count (7): only the interval is left
    sidecar.processor.step()  # read and hand on
    _forward_all(sidecar)
    applied_at = sidecar.clock()
    sidecar.processor.step()  # apply the results; nothing more to read
    assert sidecar.tally.forwarded == 3
    # Committed in the pass that found the consumer caught up, a short wait after the results,
    # not after the idle poll and the commit interval: lag reads zero and a restart at this
    # moment delivers none of the three again.
    assert broker.committed[P0][0] == 3
    assert sidecar.clock() - applied_at < IDLE_POLL
    sidecar.processor.step()  # the commit's result is served
    sidecar.processor.step()  # nothing settled since: a plain idle poll
    assert waits[-1] == IDLE_POLL
    assert _commits(sidecar) == 1


def test_a_steady_trickle_commits_on_the_cadence_not_at_every_pause_between_records() -> None:
    broker, sidecar, waits = _world()
    _produce(broker, 1)

    def a_record_arrives_while_waiting(seconds: float) -> None:
        # The next record lands during every wait: reading never catches up for long.
        waits.append(seconds)
        sidecar.clock.advance(seconds)
        _produce(broker, 1)

    sidecar.consumer.on_wait = a_record_arrives_while_waiting
    for _ in range(12):
        sidecar.processor.step()
        _forward_all(sidecar)
    forwarded = sidecar.tally.forwarded
    assert forwarded >= 6
    # Only the cadence's count (7 records) triggers a commit here.
    assert _commits(sidecar) <= forwarded // 7


def _trickle(gather: float) -> tuple[Sidecar, list[float]]:
    """A sidecar with one record in flight that polls once while three more arrive."""
    broker, sidecar, waits = _world(gather)
    _produce(broker, 1)
    sidecar.processor.step()  # read and handed on; the pool runs nothing until told
    assert sidecar.inflight.records == 1

    def three_arrive(seconds: float) -> None:
        waits.append(seconds)
        for _ in range(3):
            sidecar.clock.advance(seconds / 3)
            _produce(broker, 1)

    sidecar.consumer.on_wait = three_arrive
    sidecar.processor.step()
    return sidecar, waits


def test_records_trickling_in_while_others_are_in_flight_are_gathered_into_one_read() -> None:
    sidecar, waits = _trickle(Timing().gather)
    # One read took all three: the poll waited for more rather than returning at the first,
    # so the loop woke once for them instead of once per record.
    assert [len(chunk) for _, chunk in sidecar.pool.queued] == [1, 3]
    assert waits[-1] == Timing().gather > 0
    # They count as waiting since the poll began, so the pool does not hold them a linger more.
    assert sidecar.pool.waited[-1] == pytest.approx(waits[-1])


def test_without_a_linger_a_poll_returns_at_the_first_record_and_hands_it_on_at_once() -> None:
    # TAGGING_POOL__LINGER=0 means "send at once": the poll gathers nothing either.
    sidecar, _ = _trickle(0.0)
    assert [len(chunk) for _, chunk in sidecar.pool.queued] == [1, 1]
    assert sidecar.pool.waited[-1] < Timing().busy_poll


def test_once_caught_up_the_poll_loop_makes_the_call_itself() -> None:
    # Everything ready was read and the pool is idle: the records go out on the poll thread,
    # in one call, before step() returns; nothing is handed to a worker.
    broker, sidecar, _ = _world()
    sidecar.pool.caller_runs = True
    _produce(broker, 3)
    sidecar.processor.step()
    assert sidecar.server.stored == ["r-0", "r-1", "r-2"]
    assert sidecar.pool.queued == [] and sidecar.pool.here_calls == 1


def test_while_behind_the_records_go_to_the_workers() -> None:
    # consume() returned all it was asked for: more is ready, one call would not keep up,
    # so the pool's workers (and its limit) take the records.
    broker, sidecar, _ = _world()
    sidecar.pool.caller_runs = True
    _produce(broker, 250)  # more than a consume() batch (100)
    sidecar.processor.step()
    assert sidecar.server.stored == []
    assert sum(len(chunk) for _, chunk in sidecar.pool.queued) == 100
    assert sidecar.pool.here_calls == 0


KEYS: list[bytes | None] = [b"a", b"b", None, b"c", b"a", b"d", None, b"b", b"e", b"a"]


def _per_key(stored: list[str], broker: FakeBroker) -> dict[tuple[int, bytes | None], list[str]]:
    """The stored ids grouped by (partition, key), in the order the server stored them."""
    key_of = {
        f"{tp[1]}-{offset}": message.key()
        for tp, log in broker.logs.items()
        for offset, message in enumerate(log)
    }
    grouped: dict[tuple[int, bytes | None], list[str]] = {}
    for record_id in stored:
        grouped.setdefault((int(record_id.split("-")[0]), key_of[record_id]), []).append(record_id)
    return grouped


def test_a_call_on_the_poll_thread_carries_one_chunk_per_partition_whatever_the_keys() -> None:
    broker, sidecar, _ = _world()
    sidecar.pool.caller_runs = True
    _produce_keyed(broker, ("t", 0), KEYS)
    _produce_keyed(broker, ("t", 1), KEYS[:4])
    sidecar.processor.step()
    assert sidecar.pool.here_calls == 1 and sidecar.pool.queued == []
    [chunks] = sidecar.pool.here_chunks
    assert sorted((chunk.partition, chunk.offsets) for chunk in chunks) == [
        (0, list(range(10))),
        (1, list(range(4))),
    ]
    assert sorted(sidecar.server.stored) == sorted(
        [f"0-{i}" for i in range(10)] + [f"1-{i}" for i in range(4)]
    )


def test_a_read_the_poll_thread_cannot_send_goes_to_the_workers_in_its_ordering_units() -> None:
    # Caught up, but the pool is busy or the last call was slow: the whole chunk is split
    # into the key lanes the workers need, each in offset order, none left whole.
    broker, sidecar, _ = _world()
    _produce_keyed(broker, ("t", 0), KEYS)
    sidecar.processor.step()
    assert sidecar.pool.here_calls == 0
    units = [unit for unit, _ in sidecar.pool.queued]
    assert WHOLE not in units and len(units) == len(set(units)) > 1
    for unit, chunk in sidecar.pool.queued:
        assert chunk.offsets == sorted(chunk.offsets)
        keys = {message.key() for message in chunk.messages}
        assert (unit == ("t", 0)) == (keys == {None})  # keyless records keep the partition
    assert sorted(o for _, chunk in sidecar.pool.queued for o in chunk.offsets) == list(range(10))
    _forward_all(sidecar)
    grouped = _per_key(sidecar.server.stored, broker)
    assert all(ids == sorted(ids, key=lambda i: int(i.split("-")[1])) for ids in grouped.values())


def test_a_failed_call_on_the_poll_thread_goes_to_the_workers_split_and_in_order() -> None:
    broker, sidecar, _ = _world()
    sidecar.pool.caller_runs = True
    sidecar.server.fail_next.append(grpc.StatusCode.UNAVAILABLE)
    _produce_keyed(broker, ("t", 0), KEYS)
    sidecar.processor.step()
    assert sidecar.pool.here_calls == 1 and sidecar.server.stored == []
    assert WHOLE not in {unit for unit, _ in sidecar.pool.queued}
    assert sum(len(chunk) for _, chunk in sidecar.pool.queued) == 10  # none lost, none done
    _forward_all(sidecar)
    sidecar.processor.step()
    assert sorted(sidecar.server.stored) == sorted(f"0-{i}" for i in range(10))
    grouped = _per_key(sidecar.server.stored, broker)
    assert all(ids == sorted(ids, key=lambda i: int(i.split("-")[1])) for ids in grouped.values())
    assert sidecar.tally.forwarded == 10
