"""How the processor hands chunks to a pool whose workers are busy with some ordering units.

The real processor over the simulated world (``tests/sim``): a fake broker, the real ingest,
watermarks and router, and a pool that refuses the offers of chosen units as a busy worker
with a full queue does.
"""

from __future__ import annotations

from ..sim.downstream import FakeServer
from ..sim.kafka import TP, FakeBroker
from ..sim.world import FakeClock, Limits, Sidecar, record_value

P0: TP = ("t", 0)
P1: TP = ("t", 1)
BUSY = 10**9  # refusals: busy until the test says otherwise


def _world(consume_batch: int = 4) -> tuple[FakeBroker, Sidecar]:
    broker = FakeBroker()
    broker.create("t", 2)
    limits = Limits(max_records=1000, consume_batch=consume_batch, max_uncommitted=0)
    limits.pool_capacity = 10_000
    sidecar = Sidecar(broker, FakeServer(atomic=True), FakeClock(), limits)
    for _ in range(3):  # join the group and get both partitions
        sidecar.processor.step()
    return broker, sidecar


def _produce(broker: FakeBroker, tp: TP, count: int) -> None:
    for _ in range(count):
        # Keyless records: each partition is one ordering unit.
        broker.append(tp, None, record_value(f"{tp[1]}-{len(broker.logs[tp])}", "ok"))


def _queued_offsets(sidecar: Sidecar, tp: TP) -> list[int]:
    return [offset for key, chunk in sidecar.pool.queued if key == tp for offset in chunk.offsets]


def test_a_busy_unit_does_not_hold_back_the_records_of_other_units() -> None:
    broker, sidecar = _world()
    sidecar.pool.refusals[P0] = BUSY
    _produce(broker, P0, 2)
    sidecar.processor.step()
    _produce(broker, P1, 3)
    for _ in range(5):
        sidecar.processor.step()
    # P0's records wait for their worker; P1's went on to the pool meanwhile.
    assert _queued_offsets(sidecar, P1) == [0, 1, 2]
    assert _queued_offsets(sidecar, P0) == []
    sidecar.pool.refusals.clear()
    sidecar.processor.step()
    assert _queued_offsets(sidecar, P0) == [0, 1]


def test_a_units_later_chunk_never_passes_its_refused_earlier_chunk() -> None:
    broker, sidecar = _world()
    sidecar.pool.refusals[P0] = BUSY
    _produce(broker, P0, 2)
    sidecar.processor.step()
    _produce(broker, P0, 1)
    sidecar.processor.step()
    # One refusal left: the pass that offers the earlier chunk in vain must not offer the
    # later one, which the pool would take.
    sidecar.pool.refusals[P0] = 1
    sidecar.processor.step()
    assert _queued_offsets(sidecar, P0) == []
    sidecar.processor.step()
    assert _queued_offsets(sidecar, P0) == [0, 1, 2]


def test_reading_stops_once_a_consume_batch_of_records_waits_for_busy_workers() -> None:
    consume_batch = 4
    broker, sidecar = _world(consume_batch)
    sidecar.pool.refusals[P0] = BUSY
    _produce(broker, P0, 50)
    for _ in range(30):
        sidecar.processor.step()
    # One consume() batch waits beside the pool, no more; the rest stays in Kafka.
    assert sidecar.tally.consumed == consume_batch
    sidecar.pool.refusals.clear()
    for _ in range(60):
        sidecar.processor.step()
        ready = sidecar.pool.runnable()
        if ready:
            sidecar.pool.run(ready[0])
    assert sidecar.tally.consumed == 50
    assert sidecar.tally.forwarded == 50
