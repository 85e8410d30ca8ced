"""Smoke test for scripts/kafka-local: a real broker that keeps data and offsets across SIGKILL."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from ..support.harness import create_topic
from ..support.kafka_broker import LocalKafka

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("java") is None, reason="needs Java 17+ for the Kafka broker"),
]

TOPIC = "kafka-local-smoke"
GROUP = "kafka-local-smoke-group"
PARTITIONS = 3
RECORDS = 100


@pytest.fixture
def kafka(tmp_path: Path) -> Iterator[LocalKafka]:
    broker = LocalKafka(tmp_path / "kafka")
    try:
        yield broker
    finally:
        broker.stop()  # graceful: lets the first broker leave a CDS archive for faster starts


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )


def _subscribe_and_drain(
    consumer: Consumer, expected: int, settle_s: float, timeout_s: float = 60.0
) -> list[Message]:
    """Subscribe, wait for an assignment, then poll until ``expected`` records and
    ``settle_s`` quiet seconds have passed (so extra records would be seen)."""
    assigned: list[TopicPartition] = []

    def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
        assigned.extend(partitions)

    consumer.subscribe([TOPIC], on_assign=on_assign)
    records: list[Message] = []
    deadline = time.monotonic() + timeout_s
    quiet_since: float | None = None
    while time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None:
            if assigned and len(records) >= expected:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= settle_s:
                    break
            continue
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                continue
            raise AssertionError(f"consumer error: {err}")
        quiet_since = None
        records.append(msg)
    else:
        raise AssertionError(
            f"timed out: assigned={len(assigned)} partitions, got {len(records)}/{expected} records"
        )
    assert len(assigned) == PARTITIONS
    return records


def _log_end_offsets(consumer: Consumer) -> dict[int, int]:
    ends: dict[int, int] = {}
    for p in range(PARTITIONS):
        low, high = consumer.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=30)
        assert low == 0
        ends[p] = high
    return ends


def _committed(consumer: Consumer) -> dict[int, int]:
    tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
    result = consumer.committed(tps, timeout=30)
    for tp in result:
        assert tp.error is None, tp.error
    return {tp.partition: tp.offset for tp in result}


@pytest.mark.timeout(300)
def test_broker_keeps_data_and_offsets_across_kill(kafka: LocalKafka) -> None:
    bootstrap = kafka.start()
    assert bootstrap.startswith("127.0.0.1:")
    assert kafka.is_running()
    create_topic(bootstrap, TOPIC, PARTITIONS)

    delivery_errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            delivery_errors.append(err)

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    sent = {f"key-{i}": f"value-{i}" for i in range(RECORDS)}
    for key, value in sent.items():
        producer.produce(TOPIC, key=key, value=value, on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert delivery_errors == []

    consumer = _consumer(bootstrap, GROUP)
    try:
        records = _subscribe_and_drain(consumer, RECORDS, settle_s=1.0)
        received = {m.key().decode(): m.value().decode() for m in records}  # type: ignore[union-attr]
        assert len(records) == RECORDS
        assert received == sent
        assert len({m.partition() for m in records}) == PARTITIONS  # keys spread out
        consumer.commit(asynchronous=False)

        ends = _log_end_offsets(consumer)
        assert sum(ends.values()) == RECORDS
        assert _committed(consumer) == ends
    finally:
        consumer.close()

    # Hard crash, then restart on the same directory and address.
    kafka.stop(kill=True)
    assert not kafka.is_running()
    assert kafka.start() == bootstrap

    again = _consumer(bootstrap, GROUP)
    try:
        assert _subscribe_and_drain(again, 0, settle_s=3.0) == []
        assert _log_end_offsets(again) == ends
        assert _committed(again) == ends
    finally:
        again.close()

    # The records themselves survived too.
    fresh = _consumer(bootstrap, GROUP + "-fresh")
    try:
        replay = _subscribe_and_drain(fresh, RECORDS, settle_s=1.0)
        assert {m.key().decode(): m.value().decode() for m in replay} == sent  # type: ignore[union-attr]
    finally:
        fresh.close()
