"""The dead-letter producer, and the guard that stops a pipeline that fails everything."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from tagging_sidecar.kafka.records import Record

DeadLetterDone = Callable[[Record, KafkaError | None], None]


def dead_letter_headers(
    record: Record, error: BaseException
) -> list[tuple[str, str | bytes | None]]:
    """Headers that say where a dead letter came from and why (never the payload)."""
    return [
        ("tagging.original.topic", record.topic.encode()),
        ("tagging.original.partition", str(record.partition).encode()),
        ("tagging.original.offset", str(record.offset).encode()),
        ("tagging.error.class", type(error).__name__.encode()),
        ("tagging.error.message", str(error)[:1000].encode()),
        ("tagging.dead_lettered_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()).encode()),
    ]


class DeadLetterProducer:
    """Writes records to the dead-letter topic; ``on_done`` fires once the write is acknowledged.

    Call :meth:`poll` from the poll loop: delivery callbacks run there, on that thread.
    """

    def __init__(self, topic: str, config: dict[str, Any], on_done: DeadLetterDone) -> None:
        self.topic = topic
        self._producer = Producer(config, logger=logging.getLogger("librdkafka"))
        self._on_done = on_done
        self.pending = 0

    def send(self, record: Record, value: bytes | None, error: BaseException) -> None:
        """Queue ``record`` (its original value and key) for the dead-letter topic."""

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            self.pending -= 1
            self._on_done(record, err)

        self.pending += 1
        self._producer.produce(
            self.topic,
            value=value,
            key=record.key,
            headers=dead_letter_headers(record, error),
            on_delivery=delivered,
        )

    def poll(self) -> None:
        """Serve delivery callbacks without blocking."""
        self._producer.poll(0)

    def flush(self, timeout: float) -> int:
        """Wait for outstanding writes; return how many are still pending."""
        return int(self._producer.flush(timeout))


class FailureRateGuard:
    """Trips when most of the recent records failed, so a broken downstream cannot empty a
    topic into the dead-letter queue."""

    def __init__(self, window: int = 1000, max_ratio: float = 0.5, min_samples: int = 100) -> None:
        self._outcomes: deque[bool] = deque(maxlen=window)
        self._failures = 0
        self._max_ratio = max_ratio
        self._min_samples = min_samples

    def record(self, failed: bool, count: int = 1) -> None:
        """Add ``count`` outcomes."""
        outcomes = self._outcomes
        for _ in range(min(count, outcomes.maxlen or count)):
            if len(outcomes) == outcomes.maxlen and outcomes[0]:
                self._failures -= 1
            outcomes.append(failed)
            if failed:
                self._failures += 1

    def tripped(self) -> bool:
        """Whether the failure ratio over the window is above the limit."""
        total = len(self._outcomes)
        return total >= self._min_samples and self._failures / total > self._max_ratio
