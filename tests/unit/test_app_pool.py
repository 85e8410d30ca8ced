"""Where the pool is built: `TAGGING_POOL__SCALING` picks the adaptive limit or the seed's rule,
and `TAGGING_POOL__LINGER` is also how long the poll loop gathers."""

from __future__ import annotations

from typing import cast

import pytest

from tagging_sidecar.app import Sidecar
from tagging_sidecar.config import load_settings
from tagging_sidecar.forward import HavilahClient
from tagging_sidecar.kafka.outcomes import Outcomes
from tagging_sidecar.observe.metrics import Metrics


def build(monkeypatch: pytest.MonkeyPatch, **env: str) -> Sidecar:
    monkeypatch.setenv("TAGGING_KAFKA__TOPICS", "tagging")
    for name, value in env.items():
        monkeypatch.setenv(f"TAGGING_POOL__{name}", value)
    return Sidecar(load_settings(), metrics=Metrics(), serve_http=False)


def test_the_default_pool_starts_at_one_call_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    sidecar = build(monkeypatch, MAX_WORKERS="8")
    # The pool is built without touching the client; workers connect only once started.
    pool = sidecar._pool(cast(HavilahClient, object()), Outcomes())
    assert pool.limit == 1
    assert pool.stats().call_limit == 1


def test_seed_scaling_keeps_the_backlog_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    sidecar = build(monkeypatch, SCALING="seed", MAX_WORKERS="8")
    pool = sidecar._pool(cast(HavilahClient, object()), Outcomes())
    assert pool.limit == 8
    assert pool.stats().wanted_workers == 1  # the seed's rule at an empty backlog


@pytest.mark.parametrize(("linger", "gather"), [(None, 0.005), ("0", 0.0), ("0.002", 0.002)])
def test_the_poll_loop_gathers_for_the_pool_linger(
    monkeypatch: pytest.MonkeyPatch, linger: str | None, gather: float
) -> None:
    # TAGGING_POOL__LINGER=0 ("send at once") must not leave the poll loop gathering.
    sidecar = build(monkeypatch, **({} if linger is None else {"LINGER": linger}))
    assert sidecar._timing().gather == gather


@pytest.mark.parametrize(
    ("env", "calls_on_poll"),
    [({}, True), ({"CALL_ON_POLL": "false"}, False), ({"SCALING": "seed"}, False)],
)
def test_the_poll_loop_may_call_only_under_adaptive_scaling(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], calls_on_poll: bool
) -> None:
    # The seed's rule hands every batch to a worker, as the seed does.
    sidecar = build(monkeypatch, **env)
    pool = sidecar._pool(cast(HavilahClient, object()), Outcomes())
    assert (pool._caller is not None) is calls_on_poll
