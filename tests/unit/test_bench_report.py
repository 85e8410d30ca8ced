"""The end-to-end benchmark's report (bench/throughput.py) keeps its two kinds of latency step
apart: fractions of each setting's S in one table, the fixed live rates shared by every
forwarder in another, each cell with the producer's own acknowledgement latency beside it."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH = Path(__file__).resolve().parents[2] / "bench" / "throughput.py"


def _throughput() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_throughput", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def _produced(rate: int, ack_p50: float, ack_p99: float) -> dict[str, Any]:
    return {"rate": rate, "records": rate * 10, "ack_p50_ms": ack_p50, "ack_p99_ms": ack_p99,
            "schedule_lag_max_ms": 3.0, "queue_full": 0}  # fmt: skip


def _sink(records: int, p50: float, p99: float) -> dict[str, Any]:
    return {"records": records, "latency_ms": {"count": records, "p50": p50, "p99": p99}}


def _args(bench: ModuleType) -> argparse.Namespace:
    return argparse.Namespace(
        record_bytes=207.0, partitions=6, count=1_000_000, single_count=1_000_000,
        latency_seconds=10.0, env=[], sink_name="the Go sink", warmup_acks=[7.0], load_start=0.5,
        idle_seconds=10.0, drain_timeout=30.0, fractions=[0.1], live_rates=[2_000.0, 16_000.0],
    )  # fmt: skip


def test_fixed_rate_steps_get_their_own_table_with_the_producers_ack_p99() -> None:
    bench = _throughput()
    setting = bench.SETTINGS["batch-fast"]
    drain = bench.Drain(setting, records=1_000, seconds=0.01, cpu_seconds=0.005)
    drain.unique_ids = drain.committed = drain.end = 1_000
    fraction_step = bench.Latency(0.1, 10_000.0, _produced(10_000, 2.0, 11.0),
                                  _sink(100_000, 3.3, 14.2))  # fmt: skip
    fixed_steps = [
        bench.Latency(None, 2_000.0, _produced(2_000, 2.5, 4.6), _sink(20_000, 3.0, 8.2)),
        # Not every record arrived: the cell says so.
        bench.Latency(None, 16_000.0, _produced(16_000, 2.0, 12.4), _sink(159_000, 3.4, 14.5)),
    ]

    text = bench.report(
        _args(bench), (240_000.0, 0.6), {"batch-fast": drain}, {"batch-fast": [fraction_step]},
        {"batch-fast": fixed_steps}, [], {},
    )  # fmt: skip

    fractions, fixed = text.split("### Latency at fixed live rates, fast sink")
    assert "| sidecar, batch, fast sink | 3.3 / 14.2 (10,000/s; ack 2.0) |" in fractions
    assert "3.0 / 8.2" not in fractions
    assert "| setting | 2,000/s | 16,000/s |" in fixed
    assert (
        "| sidecar, batch, fast sink | 3.0 / 8.2 (2,000/s; ack 2.5 / 4.6) "
        "| 3.4 / 14.5* (16,000/s; ack 2.0 / 12.4) |"
    ) in fixed
    assert "| batch-fast | 2,000/s | 2,000 |" in fixed
    assert "| batch-fast | 10% | 10,000 |" in fixed


def test_without_fixed_rate_steps_there_is_no_such_table() -> None:
    bench = _throughput()
    setting = bench.SETTINGS["batch-50us"]
    drain = bench.Drain(setting, records=1_000, seconds=0.01, cpu_seconds=0.005)
    step = bench.Latency(0.1, 7_000.0, _produced(7_000, 2.0, 9.0), _sink(70_000, 9.1, 59.1))

    text = bench.report(
        _args(bench), (240_000.0, 0.6), {"batch-50us": drain}, {"batch-50us": [step]},
        {"batch-50us": []}, [], {},
    )  # fmt: skip

    assert "fixed live rates" not in text
    assert "| sidecar, batch, sink 50us/record | 9.1 / 59.1 (7,000/s; ack 2.0) |" in text
