"""The benchmark's own tools measure what they claim: the measuring sink, the live producer and
the baseline forwarder (bench/), against real gRPC servers and a real broker on loopback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from ..support.harness import all_committed, eventually
from ..support.pysink import PySink, parse_duration

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _produce(*where: str, rate: int, seconds: float) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, str(BENCH / "live_producer.py"), *where, "--rate", str(rate),
         "--seconds", str(seconds), "--run-id", uuid.uuid4().hex[:8]],
        stdout=subprocess.PIPE, text=True, check=True, timeout=120,
    )  # fmt: skip
    result: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_durations_use_the_go_flag_syntax() -> None:
    assert [parse_duration(t) for t in ("50us", "2ms", "0.5s", "0")] == pytest.approx(
        [5e-5, 0.002, 0.5, 0.0]
    )


def test_the_direct_producer_reaches_the_measuring_sink_with_a_latency_for_every_record() -> None:
    with PySink() as sink:
        produced = _produce("--direct", sink.target, rate=2000, seconds=0.5)
        stats = sink.stats()
        assert produced["records"] == 1000
        assert stats["records"] == stats["unique_ids"] == stats["latency_ms"]["count"] == 1000
        assert 0 <= stats["latency_ms"]["p50"] <= stats["latency_ms"]["p99"]
        sink.reset()
        after = sink.stats()
        assert (after["records"], after["latency_ms"]["count"]) == (0, 0)
        assert after["unique_ids"] == 1000  # ids stay across a reset, as in the Go sink


def test_a_single_only_sink_refuses_the_batch_rpc() -> None:
    with PySink(single_only=True) as sink:
        with pytest.raises(subprocess.CalledProcessError):
            _produce("--direct", sink.target, rate=100, seconds=0.05)
        assert sink.stats()["records"] == 0


def test_the_baseline_forwarder_delivers_and_commits_everything_the_producer_wrote(
    kafka_bootstrap: str, topic_factory: Callable[[int], str], group_id: str
) -> None:
    topic = topic_factory(3)
    produced = _produce("--bootstrap", kafka_bootstrap, "--topic", topic, rate=2000, seconds=1)
    with PySink() as sink:
        forwarder = subprocess.Popen(
            [sys.executable, str(BENCH / "baseline_forwarder.py"), "--bootstrap", kafka_bootstrap,
             "--topic", topic, "--group", group_id, "--target", sink.target],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            eventually(lambda: sink.stats()["records"] >= produced["records"], timeout=60)
            eventually(all_committed(kafka_bootstrap, group_id, topic, 3), timeout=60)
        finally:
            forwarder.send_signal(signal.SIGTERM)
            out, _ = forwarder.communicate(timeout=60)
        summary = json.loads(out.strip().splitlines()[-1])
        assert forwarder.returncode == 0
        assert summary["records"] == sink.stats()["unique_ids"] == produced["records"] == 2000
