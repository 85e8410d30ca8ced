"""Probe logic with a controllable clock, served over real HTTP on loopback."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry, Counter

from tagging_sidecar.observe.health import HealthServer, HealthState

from .fakes import FakeClock


def ready_state(clock: FakeClock) -> HealthState:
    state = HealthState(stall_timeout=60, tick_timeout=15, clock=clock)
    state.in_group = True
    state.downstream_up = True
    return state


def test_liveness_follows_the_poll_loop() -> None:
    clock = FakeClock()
    state = ready_state(clock)
    assert state.live()[0]
    clock.advance(16)
    ok, why = state.live()
    assert not ok
    assert "has not ticked" in why
    state.tick()
    assert state.live()[0]


def test_readiness_rules() -> None:
    clock = FakeClock()
    state = ready_state(clock)
    assert state.ready() == (True, "ok")
    state.downstream_up = False
    assert state.ready()[1] == "gRPC downstream not reachable"
    state.downstream_up = True
    clock.advance(61)
    assert "watermark stuck" in state.ready()[1]
    state.watermark_moved()
    assert state.ready()[0]
    state.in_group = False
    assert not state.ready()[0]
    state.in_group = True
    state.halted_reason = "partition t/0 stopped at offset 3"
    assert state.ready() == (False, "partition t/0 stopped at offset 3")


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_endpoints_over_http() -> None:
    clock = FakeClock()
    state = ready_state(clock)
    registry = CollectorRegistry()
    Counter("probe_test", "a test counter", registry=registry).inc(3)
    server = HealthServer("127.0.0.1", 0, state, registry)
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert get(base + "/livez") == (200, "ok\n")
        assert get(base + "/readyz") == (200, "ok\n")
        state.downstream_up = False
        assert get(base + "/readyz")[0] == 503
        status, body = get(base + "/metrics")
        assert status == 200
        assert "probe_test_total 3.0" in body
        assert get(base + "/nope")[0] == 404
    finally:
        server.stop()


def test_startup_waits_for_a_full_pass_of_the_poll_loop() -> None:
    """Constructing the state is not starting: the first tick only begins the first pass."""
    clock = FakeClock()
    state = HealthState(stall_timeout=60, tick_timeout=15, clock=clock)
    assert state.started() == (False, "the poll loop has not completed a pass yet")
    state.tick()
    assert not state.started()[0]
    state.tick()
    assert state.started() == (True, "ok")
    clock.advance(1000)
    assert state.started()[0], "once started, always started (liveness takes over)"


def test_joining_the_group_counts_as_started() -> None:
    state = HealthState(stall_timeout=60, tick_timeout=15, clock=FakeClock())
    state.in_group = True
    assert state.started() == (True, "ok")


def test_startupz_over_http() -> None:
    state = HealthState(stall_timeout=60, tick_timeout=15, clock=FakeClock())
    server = HealthServer("127.0.0.1", 0, state, CollectorRegistry())
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert get(base + "/livez")[0] == 200
        assert get(base + "/startupz")[0] == 503
        state.tick()
        state.tick()
        assert get(base + "/startupz") == (200, "ok\n")
    finally:
        server.stop()
