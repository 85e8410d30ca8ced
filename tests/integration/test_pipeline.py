"""Pipeline behaviour on a real broker and a real gRPC sink: formats, order, bad records."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from confluent_kafka import Consumer, Producer

from tagging_sidecar.app import FatalError
from tagging_sidecar.config import InputFormat
from tagging_sidecar.produce import encode, make_record, produce
from tagging_sidecar.sink import SinkServer

from ..support.harness import all_committed, eventually, offsets, read_ids
from ..support.inprocess import RunningSidecar, make_settings

pytestmark = pytest.mark.integration


def test_json_input_in_key_order(
    kafka_bootstrap: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    sink: SinkServer,
    tmp_path: Path,
) -> None:
    topic = topic_factory(2)
    ids = produce(
        {"bootstrap.servers": kafka_bootstrap}, topic, 3000, fmt=InputFormat.JSON, run_id="j"
    )
    settings = make_settings(
        kafka_bootstrap,
        topic,
        group_id,
        f"127.0.0.1:{sink.port}",
        decode={"format": "json"},
        pool={"max_workers": 8, "queue_size": 16},
    )
    with RunningSidecar(settings) as running:
        eventually(lambda: len(set(read_ids(tmp_path / "received.txt"))) == 3000)
        eventually(all_committed(kafka_bootstrap, group_id, topic, 2), timeout=30)
        summary = running.stop()
    assert summary.forwarded == 3000
    received = read_ids(tmp_path / "received.txt")
    assert set(received) == set(ids)
    # Records of one key (the subject: index % 64) arrive in the order they were produced.
    by_key: dict[int, list[int]] = defaultdict(list)
    for record_id in received:
        index = int(record_id.split("-")[1])
        by_key[index % 64].append(index)
    for sequence in by_key.values():
        assert sequence == sorted(sequence)


def _produce_raw(bootstrap: str, topic: str, values: list[tuple[int, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for partition, value in values:
        producer.produce(topic, value, partition=partition)
    assert producer.flush(30) == 0


def test_poison_pill_goes_to_the_dead_letter_topic_with_headers(
    kafka_bootstrap: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    sink: SinkServer,
    tmp_path: Path,
) -> None:
    topic = topic_factory(1)
    dlq = topic_factory(1)
    values = [(0, encode(make_record("p", i), InputFormat.PROTOBUF)) for i in range(20)]
    values[7] = (0, b"\x08\x96\x01 definitely not a Tagging \xff")
    _produce_raw(kafka_bootstrap, topic, values)
    settings = make_settings(
        kafka_bootstrap, topic, group_id, f"127.0.0.1:{sink.port}", dlq={"topic": dlq}
    )
    with RunningSidecar(settings) as running:
        eventually(all_committed(kafka_bootstrap, group_id, topic, 1), timeout=60)
        summary = running.stop()
    received = set(read_ids(tmp_path / "received.txt"))
    assert received == {f"p-{i}" for i in range(20) if i != 7}
    assert summary.dead_lettered == 1
    consumer = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": group_id + "-dlq",
         "auto.offset.reset": "earliest"}
    )  # fmt: skip
    consumer.subscribe([dlq])
    messages = []
    for _ in range(30):
        messages += [m for m in consumer.consume(10, 1.0) if m.error() is None]
        if messages:
            break
    consumer.close()
    assert len(messages) == 1
    assert messages[0].value() == values[7][1]
    headers = dict(messages[0].headers() or [])
    assert headers["tagging.original.topic"] == topic.encode()
    assert headers["tagging.original.partition"] == b"0"
    assert headers["tagging.original.offset"] == b"7"
    assert headers["tagging.error.class"] == b"DecodeError"
    assert headers["tagging.error.message"]
    stamp = headers["tagging.dead_lettered_at"]
    assert isinstance(stamp, bytes)
    assert re.match(rb"\d{4}-\d\d-\d\dT", stamp)


def test_without_a_dead_letter_topic_a_bad_record_stops_only_its_partition(
    kafka_bootstrap: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    sink: SinkServer,
    tmp_path: Path,
) -> None:
    topic = topic_factory(2)
    good = [(p, encode(make_record(f"h{p}", i), InputFormat.PROTOBUF)) for p in (0, 1)
            for i in range(10)]  # fmt: skip
    bad = [(0, b"")]
    after = [(0, encode(make_record("h0", 99), InputFormat.PROTOBUF))]
    _produce_raw(kafka_bootstrap, topic, good + bad + after)
    settings = make_settings(kafka_bootstrap, topic, group_id, f"127.0.0.1:{sink.port}")
    with RunningSidecar(settings) as running:
        health = running.sidecar.health

        def stopped_at_bad_record() -> bool:
            committed, _ends = offsets(kafka_bootstrap, group_id, topic, 2)
            return committed == [10, 10]

        eventually(stopped_at_bad_record, timeout=60)
        ready, why = health.ready()
        assert not ready
        assert f"{topic}/0 stopped at offset 10" in why
        running.stop()
    received = set(read_ids(tmp_path / "received.txt"))
    assert "h0-99" not in received  # nothing past the bad record is delivered or committed
    assert {f"h1-{i}" for i in range(10)} <= received
    committed, ends = offsets(kafka_bootstrap, group_id, topic, 2)
    assert committed == [10, 10]
    assert ends == [12, 10]


def test_a_record_the_server_rejects_is_isolated_and_dead_lettered(
    kafka_bootstrap: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    sink: SinkServer,
    tmp_path: Path,
) -> None:
    topic = topic_factory(1)
    dlq = topic_factory(1)
    ids = produce({"bootstrap.servers": kafka_bootstrap}, topic, 200, run_id="rej")
    sink.faults.reject_ids = {"rej-123"}
    settings = make_settings(
        kafka_bootstrap,
        topic,
        group_id,
        f"127.0.0.1:{sink.port}",
        dlq={"topic": dlq},
        pool={"ordering": "partition"},
    )
    with RunningSidecar(settings) as running:
        eventually(all_committed(kafka_bootstrap, group_id, topic, 1), timeout=60)
        summary = running.stop()
    assert set(read_ids(tmp_path / "received.txt")) == set(ids) - {"rej-123"}
    assert summary.dead_lettered == 1


def test_retryable_failures_are_retried_until_delivered(
    kafka_bootstrap: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    sink: SinkServer,
    tmp_path: Path,
) -> None:
    topic = topic_factory(3)
    ids = produce({"bootstrap.servers": kafka_bootstrap}, topic, 1000)
    sink.faults.fail_first = 5
    sink.faults.fail_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    settings = make_settings(kafka_bootstrap, topic, group_id, f"127.0.0.1:{sink.port}")
    with RunningSidecar(settings) as running:
        eventually(all_committed(kafka_bootstrap, group_id, topic, 3), timeout=60)
        running.stop()
    assert sink.counters.failed_calls == 5
    assert set(read_ids(tmp_path / "received.txt")) == set(ids)
    retried = running.sidecar.metrics.registry.get_sample_value(
        "tagging_sidecar_records_retried_total"
    )
    assert retried is not None
    assert retried > 0


def test_records_whose_retries_ran_out_are_dead_lettered(
    kafka_bootstrap: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    sink: SinkServer,
    tmp_path: Path,
) -> None:
    topic = topic_factory(1)
    dlq = topic_factory(1)
    produce({"bootstrap.servers": kafka_bootstrap}, topic, 20)
    sink.faults.fail_first = 10_000  # the downstream never recovers
    settings = make_settings(
        kafka_bootstrap,
        topic,
        group_id,
        f"127.0.0.1:{sink.port}",
        dlq={"topic": dlq},
        grpc={"max_attempts": 2, "retry_initial_backoff": 0.01},
    )
    with RunningSidecar(settings) as running:
        eventually(all_committed(kafka_bootstrap, group_id, topic, 1), timeout=60)
        summary = running.stop()
    assert summary.dead_lettered == 20
    assert read_ids(tmp_path / "received.txt") == []
    exhausted = running.sidecar.metrics.registry.get_sample_value(
        "tagging_sidecar_records_failed_total", {"reason": "retries_exhausted"}
    )
    assert exhausted == 20


def test_a_failing_majority_stops_the_pipeline_instead_of_dead_lettering_the_topic(
    kafka_bootstrap: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    sink: SinkServer,
) -> None:
    topic = topic_factory(1)
    dlq = topic_factory(1)
    _produce_raw(kafka_bootstrap, topic, [(0, b"\xff not a record")] * 300)
    settings = make_settings(
        kafka_bootstrap, topic, group_id, f"127.0.0.1:{sink.port}", dlq={"topic": dlq}
    )
    running = RunningSidecar(settings).__enter__()
    eventually(lambda: running.error is not None, timeout=60)
    with pytest.raises(FatalError, match="most recent records failed"):
        running.stop()
    committed, _ends = offsets(kafka_bootstrap, group_id, topic, 1)
    assert committed[0] < 300  # it stopped well before dead-lettering everything


def test_a_server_without_the_batch_rpc_gets_one_record_per_message(
    kafka_bootstrap: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    sink: SinkServer,
    tmp_path: Path,
) -> None:
    topic = topic_factory(2)
    ids = produce({"bootstrap.servers": kafka_bootstrap}, topic, 500)
    sink.faults.single_only = True
    settings = make_settings(kafka_bootstrap, topic, group_id, f"127.0.0.1:{sink.port}")
    with RunningSidecar(settings) as running:
        eventually(all_committed(kafka_bootstrap, group_id, topic, 2), timeout=60)
        running.stop()
    assert set(read_ids(tmp_path / "received.txt")) == set(ids)
    codes = running.sidecar.metrics.registry.get_sample_value(
        "tagging_sidecar_rpc_duration_seconds_count", {"code": "UNIMPLEMENTED"}
    )
    assert codes is not None
    assert codes >= 1  # it did try the batch RPC first
