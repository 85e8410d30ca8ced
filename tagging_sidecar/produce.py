"""The demo producer: writes valid, unique ``Tagging`` records to a topic."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from google.protobuf import json_format

from tagging_sidecar.config import InputFormat
from tagging_sidecar.contract.tagging.v1.tagging_pb2 import Tagging

_SUBJECTS = [f"user:{i}" for i in range(64)]
_METRICS = ["page_views", "clicks", "purchases", "latency_ms"]


def make_record(run_id: str, index: int, payload_pad: int = 0) -> Tagging:
    """Record ``index`` of a run: id ``{run_id}-{index}``, event time now."""
    record = Tagging(
        id=f"{run_id}-{index}",
        subject=_SUBJECTS[index % len(_SUBJECTS)],
        metric=_METRICS[index % len(_METRICS)],
        value=float(index % 1000),
        source="tagging-sidecar-demo",
    )
    record.labels["region"] = "eu-west-1" if index % 2 else "us-east-1"
    record.tags.append("demo")
    if payload_pad:
        record.labels["pad"] = "x" * payload_pad
    record.event_time.GetCurrentTime()
    return record


def encode(record: Tagging, fmt: InputFormat) -> bytes:
    """Serialize ``record`` in the given input format."""
    if fmt is InputFormat.JSON:
        return json_format.MessageToJson(record, indent=None).encode()
    return record.SerializeToString()


def ensure_topic(config: dict[str, Any], topic: str, partitions: int, timeout: float = 30) -> None:
    """Create ``topic`` with ``partitions`` partitions unless it exists."""
    admin = AdminClient(config)
    existing = admin.list_topics(timeout=timeout).topics
    if topic in existing:
        return
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions)])
    try:
        futures[topic].result(timeout)
    except Exception as exc:  # a concurrent create is fine, anything else is raised
        error = exc.args[0] if exc.args else None
        if not (isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS):
            raise


def produce(
    config: dict[str, Any],
    topic: str,
    count: int,
    *,
    rate: float = 0.0,
    fmt: InputFormat = InputFormat.PROTOBUF,
    run_id: str | None = None,
    payload_pad: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Produce ``count`` records (at most ``rate`` per second if set); return their ids."""
    run_id = run_id or uuid.uuid4().hex[:12]
    producer = Producer({**config, "linger.ms": 20, "batch.num.messages": 10000})
    failures: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(err.str())

    ids = []
    started = time.monotonic()
    for index in range(count):
        record = make_record(run_id, index, payload_pad)
        ids.append(record.id)
        while True:
            try:
                producer.produce(
                    topic, encode(record, fmt), key=record.subject.encode(), on_delivery=delivered
                )
                break
            except BufferError:
                producer.poll(0.1)
        if rate > 0:
            ahead = (index + 1) / rate - (time.monotonic() - started)
            if ahead > 0:
                producer.poll(ahead)
        if index % 1000 == 0:
            producer.poll(0)
            if progress is not None:
                progress(index)
    remaining = producer.flush(60)
    if remaining or failures:
        raise RuntimeError(f"{remaining} records unconfirmed, {len(failures)} failed")
    if progress is not None:
        progress(count)
    return ids
