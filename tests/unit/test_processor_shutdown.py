"""Shutdown is bounded even when the consumer cannot close (coordinator down)."""

from __future__ import annotations

import threading

from ..sim.downstream import FakeServer
from ..sim.kafka import FakeBroker
from ..sim.world import FakeClock, Limits, Sidecar


def test_a_consumer_that_cannot_close_does_not_hold_the_shutdown() -> None:
    broker = FakeBroker()
    broker.create("t", 2)
    clock = FakeClock()
    sidecar = Sidecar(broker, FakeServer(atomic=True), clock, Limits())
    released = threading.Event()
    closing = threading.Event()

    def blocked_close() -> None:
        closing.set()
        released.wait(60)  # librdkafka waiting for a coordinator that is down

    sidecar.consumer.close = blocked_close  # type: ignore[method-assign]
    done = threading.Event()

    def stop() -> None:
        sidecar.processor.close(clock.now + 0.5)
        done.set()

    stopper = threading.Thread(target=stop, daemon=True)
    stopper.start()
    # A bound, not a measurement: without the deadline this waits for the full minute.
    assert done.wait(30), "close() waited for the consumer beyond its deadline"
    assert closing.is_set()  # close was attempted
    released.set()
