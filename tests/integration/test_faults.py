"""The fault suite: crashes, restarts, scaling, a failing downstream and a failing broker.

Every scenario checks its outcome from what the sink recorded and from the group's committed
offsets, and watches that committed offsets never go backwards.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tagging_sidecar.produce import produce
from tagging_sidecar.sink import SinkServer

from ..support.harness import (
    SidecarProcess,
    all_committed,
    all_received,
    create_topic,
    eventually,
    free_port,
    http_get,
    metric_value,
    read_ids,
    sidecar_env,
)
from ..support.kafka_broker import LocalKafka
from ..support.monitor import OffsetMonitor

pytestmark = pytest.mark.integration

MAX_WORKERS = 4
QUEUE_SIZE = 32
CONSUME_BATCH = 100
COMMIT_INTERVAL = 0.2


# A killed member holds its partitions until its session times out: keep that short here.
FAST_SESSION = '{"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}'


def fault_env(
    bootstrap: str, topic: str, group: str, sink_port: int, **extra: str
) -> dict[str, str]:
    extra.setdefault("KAFKA__PROPERTIES", FAST_SESSION)
    return sidecar_env(
        bootstrap,
        topic,
        group,
        f"127.0.0.1:{sink_port}",
        POOL__MAX_WORKERS=str(MAX_WORKERS),
        POOL__QUEUE_SIZE=str(QUEUE_SIZE),
        # Adaptive scaling: a lane holds one batch, so the same bound holds under both policies.
        POOL__MAX_BATCH=str(QUEUE_SIZE),
        KAFKA__CONSUME_BATCH_SIZE=str(CONSUME_BATCH),
        KAFKA__COMMIT_INTERVAL=str(COMMIT_INTERVAL),
        GRPC__RETRY_MAX_BACKOFF="0.5",
        **extra,
    )


class BackgroundProducer:
    """Produces ``count`` records at ``rate`` per second on a thread; ``ids`` when done."""

    def __init__(self, bootstrap: str, topic: str, count: int, rate: float) -> None:
        self.ids: list[str] = []
        self._args = (bootstrap, topic, count, rate)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        bootstrap, topic, count, rate = self._args
        self.ids = produce({"bootstrap.servers": bootstrap}, topic, count, rate=rate)

    def join(self) -> list[str]:
        self._thread.join(300)
        assert self.ids, "producer did not finish"
        return self.ids


def in_flight_capacity() -> int:
    # Waiting in the pool + one batch in each worker's hands + one consume() batch pending.
    return MAX_WORKERS * QUEUE_SIZE * 2 + CONSUME_BATCH


def test_sigterm_then_restart_delivers_everything_exactly_once(
    kafka_bootstrap: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    sink: SinkServer,
    tmp_path: Path,
) -> None:
    topic = topic_factory(3)
    received = tmp_path / "received.txt"
    sink.faults.delay = 0.005  # slow enough to stop it half way
    ids = produce({"bootstrap.servers": kafka_bootstrap}, topic, 8000)
    env = fault_env(kafka_bootstrap, topic, group_id, sink.port)
    with OffsetMonitor(kafka_bootstrap, group_id, topic, 3) as monitor:
        first = SidecarProcess(env, tmp_path / "first.log")
        eventually(lambda: len(read_ids(received)) > 2000, timeout=120)
        assert first.terminate() == 0
        assert len(set(read_ids(received))) < len(ids)  # it really stopped half way
        second = SidecarProcess(env, tmp_path / "second.log")
        eventually(all_received(received, ids), timeout=180)
        eventually(all_committed(kafka_bootstrap, group_id, topic, 3), timeout=60)
        assert second.terminate() == 0
    got = read_ids(received)
    assert Counter(got).most_common(1)[0][1] == 1  # no duplicates after a clean stop
    assert set(got) == set(ids)
    assert monitor.regressions == []


def test_scaling_one_to_three_to_one_process_loses_nothing(
    kafka_bootstrap: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    sink: SinkServer,
    tmp_path: Path,
) -> None:
    topic = topic_factory(6)
    received = tmp_path / "received.txt"
    env = fault_env(kafka_bootstrap, topic, group_id, sink.port)
    with OffsetMonitor(kafka_bootstrap, group_id, topic, 6) as monitor:
        producer = BackgroundProducer(kafka_bootstrap, topic, 12_000, 1500)
        first = SidecarProcess(env, tmp_path / "s0.log")
        eventually(lambda: len(read_ids(received)) > 1000, timeout=120)
        extra = [SidecarProcess(env, tmp_path / f"s{i}.log") for i in (1, 2)]
        eventually(lambda: all("partitions assigned" in p.log() for p in extra), timeout=60)
        mark = len(read_ids(received))
        eventually(lambda: len(read_ids(received)) > mark + 2000, timeout=120)
        for process in extra:
            assert process.terminate() == 0
        ids = producer.join()
        eventually(all_received(received, ids), timeout=180)
        eventually(all_committed(kafka_bootstrap, group_id, topic, 6), timeout=60)
        assert first.terminate() == 0
    got = read_ids(received)
    assert set(got) == set(ids)
    assert monitor.regressions == []
    # Revoked partitions were drained and committed before they moved: nothing read twice.
    assert len(got) == len(set(got))


def _metric(text: str, name: str) -> float:
    value = metric_value(text, name)
    if value is None:
        raise AssertionError(f"{name} not exported")
    return value


@pytest.fixture
def sink_port() -> int:
    return free_port()


@pytest.fixture
def restartable_sink(sink_port: int, tmp_path: Path) -> Iterator[list[SinkServer]]:
    """A sink on a fixed port that a test can stop and start again (same record file)."""
    servers = [SinkServer(f"127.0.0.1:{sink_port}", record_path=tmp_path / "received.txt")]
    servers[0].start()
    yield servers
    servers[-1].stop(grace=0.5)


def test_sink_down_longer_than_max_poll_interval_pauses_without_rebalance(
    kafka_bootstrap: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    restartable_sink: list[SinkServer],
    sink_port: int,
    tmp_path: Path,
) -> None:
    topic = topic_factory(3)
    received = tmp_path / "received.txt"
    http_port = free_port()
    env = fault_env(
        kafka_bootstrap,
        topic,
        group_id,
        sink_port,
        HTTP__PORT=str(http_port),
        KAFKA__PROPERTIES='{"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000, '
        '"max.poll.interval.ms": 6000}',
    )
    base = f"http://127.0.0.1:{http_port}"
    with OffsetMonitor(kafka_bootstrap, group_id, topic, 3) as monitor:
        producer = BackgroundProducer(kafka_bootstrap, topic, 8_000, 600)
        sidecar = SidecarProcess(env, tmp_path / "sidecar.log")
        eventually(lambda: http_get(base + "/readyz")[0] == 200, timeout=60)
        eventually(lambda: len(read_ids(received)) > 1000, timeout=60)
        restartable_sink[0].stop(grace=0)
        outage_started = time.monotonic()
        eventually(lambda: http_get(base + "/readyz")[0] == 503, timeout=30)
        _status, why = http_get(base + "/readyz")
        assert "gRPC downstream" in why
        paused = "tagging_sidecar_partitions_paused"
        eventually(lambda: _metric(http_get(base + "/metrics")[1], paused) == 3, timeout=30)
        assert http_get(base + "/livez")[0] == 200  # still polling: alive, just not ready
        # The outage must outlast max.poll.interval.ms (6 s, the least librdkafka allows with
        # this session timeout) twice over; no event marks that moment, so this one wait is a
        # duration on purpose.
        time.sleep(max(0.0, 13 - (time.monotonic() - outage_started)))
        restartable_sink.append(SinkServer(f"127.0.0.1:{sink_port}", record_path=received))
        restartable_sink[-1].start()
        eventually(lambda: http_get(base + "/readyz")[0] == 200, timeout=60)
        ids = producer.join()
        eventually(all_received(received, ids), timeout=180)
        eventually(all_committed(kafka_bootstrap, group_id, topic, 3), timeout=60)
        assert _metric(http_get(base + "/metrics")[1], paused) == 0
        assert sidecar.terminate() == 0
    log = sidecar.log()
    assert log.count('"partitions assigned"') == 1, "the outage caused a rebalance"
    assert "partitions revoked" not in log.split('"signal received')[0]
    assert monitor.regressions == []


def test_hanging_sink_hits_deadlines_and_recovers(
    kafka_bootstrap: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    sink: SinkServer,
    tmp_path: Path,
) -> None:
    topic = topic_factory(2)
    received = tmp_path / "received.txt"
    ids = produce({"bootstrap.servers": kafka_bootstrap}, topic, 3000)
    sink.faults.hang = True
    env = fault_env(kafka_bootstrap, topic, group_id, sink.port, GRPC__TIMEOUT="1")
    sidecar = SidecarProcess(env, tmp_path / "sidecar.log")
    eventually(lambda: "DEADLINE_EXCEEDED" in sidecar.log(), timeout=60)
    assert read_ids(received) == []
    sink.faults.hang = False
    eventually(all_received(received, ids), timeout=120)
    eventually(all_committed(kafka_bootstrap, group_id, topic, 2), timeout=60)
    assert sidecar.terminate() == 0


def test_slow_sink_applies_backpressure_with_bounded_memory(
    kafka_bootstrap: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    sink: SinkServer,
    tmp_path: Path,
) -> None:
    topic = topic_factory(3)
    received = tmp_path / "received.txt"
    ids = produce({"bootstrap.servers": kafka_bootstrap}, topic, 10_000)
    sink.faults.delay = 0.25
    http_port = free_port()
    env = fault_env(kafka_bootstrap, topic, group_id, sink.port, HTTP__PORT=str(http_port))
    sidecar = SidecarProcess(env, tmp_path / "sidecar.log")
    metrics_url = f"http://127.0.0.1:{http_port}/metrics"
    peak = {"in_flight": 0.0, "read_ahead": 0.0, "consumed": 0.0}

    def backpressure_engaged() -> bool:
        # Sample on every check.
        status, text = http_get(metrics_url)
        if status != 200:
            return False
        in_flight = _metric(text, "tagging_sidecar_inflight_records")
        consumed = _metric(text, "tagging_sidecar_records_consumed_total")
        forwarded = _metric(text, "tagging_sidecar_records_forwarded_total")
        peak["in_flight"] = max(peak["in_flight"], in_flight)
        peak["read_ahead"] = max(peak["read_ahead"], consumed - forwarded)
        peak["consumed"] = consumed
        # Done once the pipeline has cycled through its whole in-flight capacity twice: an
        # unbounded read-ahead would have shown by then.
        return forwarded >= 2 * in_flight_capacity()

    eventually(backpressure_engaged, timeout=60)
    peak_in_flight, peak_read_ahead, consumed = (
        peak["in_flight"],
        peak["read_ahead"],
        peak["consumed"],
    )
    # Backpressure: the sidecar reads only as far ahead as it can hold in flight, not the topic.
    assert 0 < peak_in_flight <= in_flight_capacity()
    assert peak_read_ahead <= in_flight_capacity()
    assert consumed < len(ids)
    sink.faults.delay = 0
    eventually(all_received(received, ids), timeout=120)
    eventually(all_committed(kafka_bootstrap, group_id, topic, 3), timeout=60)
    assert sidecar.terminate() == 0


def test_broker_restart_mid_stream_loses_nothing(
    sink: SinkServer, tmp_path: Path, group_id: str
) -> None:
    broker = LocalKafka(tmp_path / "own-kafka")
    bootstrap = broker.start()
    try:
        topic = "restart-me"
        create_topic(bootstrap, topic, 3)
        received = tmp_path / "received.txt"
        env = fault_env(bootstrap, topic, group_id, sink.port)
        first = produce({"bootstrap.servers": bootstrap}, topic, 4000, run_id="before")
        with OffsetMonitor(bootstrap, group_id, topic, 3) as monitor:
            sidecar = SidecarProcess(env, tmp_path / "sidecar.log")
            eventually(lambda: len(read_ids(received)) > 500, timeout=60)
            broker.stop()
            # Restart only once the sidecar has seen the broker go away.
            eventually(lambda: '"kafka client error"' in sidecar.log(), timeout=60)
            broker.start()
            second = produce({"bootstrap.servers": bootstrap}, topic, 4000, run_id="after")
            eventually(all_received(received, first + second), timeout=180)
            eventually(all_committed(bootstrap, group_id, topic, 3), timeout=90)
            assert sidecar.terminate() == 0
        assert monitor.regressions == []
    finally:
        broker.stop()


def test_sigterm_while_the_broker_is_down_exits_within_the_grace_period(
    sink: SinkServer, tmp_path: Path, group_id: str
) -> None:
    """The last commit and the consumer's close cannot reach a coordinator that is down: the
    sidecar still exits within the pod's termination grace (grace period + 10 s)."""
    broker = LocalKafka(tmp_path / "own-kafka")
    bootstrap = broker.start()
    try:
        topic = "down-at-exit"
        create_topic(bootstrap, topic, 3)
        received = tmp_path / "received.txt"
        grace = 3
        env = fault_env(bootstrap, topic, group_id, sink.port, SHUTDOWN__GRACE_PERIOD=str(grace))
        produce({"bootstrap.servers": bootstrap}, topic, 2000)
        sidecar = SidecarProcess(env, tmp_path / "sidecar.log")
        eventually(lambda: len(read_ids(received)) > 500, timeout=60)
        broker.stop()
        # The sidecar has seen the broker go: librdkafka reported a client error, or, when it
        # reported none (it need not), the group session timed out and the partitions were lost.
        eventually(
            lambda: any(
                sign in sidecar.log() for sign in ('"kafka client error"', '"partitions lost')
            ),
            timeout=60,
        )
        sidecar.proc.send_signal(signal.SIGTERM)
        # A bound on the exit, as the kubelet applies one; not a timing measurement.
        assert sidecar.wait(grace + 10) == 0, sidecar.log()[-2000:]
    finally:
        broker.stop()
