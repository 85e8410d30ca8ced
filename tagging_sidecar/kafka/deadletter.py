"""The dead-letter producer: the original record, with headers that say where it came from.

A dead-letter write must never take the process down: a record larger than the producer or
the broker accepts is written again truncated (its original size in ``tagging.original.size``),
and a full local queue is waited on while delivery reports are served. A write that still
fails is reported to ``on_done`` with its error, and the caller decides (it halts the record's
partition, leaving the record uncommitted).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from tagging_sidecar.errors import DeadLetterError
from tagging_sidecar.kafka.records import Headers, Record

#: (record, None) once the write is acknowledged, or (record, why it failed)
DeadLetterDone = Callable[[Record, str | None], None]

#: how long ``send`` waits for room in a full local queue before giving up on the record
QUEUE_FULL_WAIT = 5.0


def dead_letter_headers(record: Record, error: BaseException) -> Headers:
    """The record's own headers, then ours: where it came from and why (never the payload)."""
    return [
        *(record.headers or []),
        ("tagging.original.topic", record.topic.encode()),
        ("tagging.original.partition", str(record.partition).encode()),
        ("tagging.original.offset", str(record.offset).encode()),
        ("tagging.error.class", type(error).__name__.encode()),
        ("tagging.error.message", str(error)[:1000].encode()),
        ("tagging.dead_lettered_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()).encode()),
    ]


def _too_large(code: int) -> bool:
    return code in (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE)


class DeadLetterProducer:
    """Writes records to the dead-letter topic; ``on_done`` fires once per record.

    Call :meth:`poll` from the poll loop: delivery reports (and so ``on_done``) run there.
    """

    def __init__(
        self,
        topic: str,
        producer: Producer,
        on_done: DeadLetterDone,
        truncate_to: int,
    ) -> None:
        self.topic = topic
        self._producer = producer
        self._on_done = on_done
        self._truncate_to = truncate_to
        self.pending = 0

    def send(self, record: Record, error: BaseException) -> None:
        """Queue the original ``record`` (value, key, headers) for the dead-letter topic."""
        self.pending += 1
        try:
            self._produce(record, record.value, dead_letter_headers(record, error))
        except DeadLetterError as exc:
            self.pending -= 1
            self._on_done(record, str(exc))

    def _produce(self, record: Record, value: bytes | None, headers: Headers) -> None:
        deadline = time.monotonic() + QUEUE_FULL_WAIT

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None and _too_large(err.code()) and not _truncated(headers):
                self._resend_truncated(record, value, headers)
                return
            self.pending -= 1
            self._on_done(record, None if err is None else err.str())

        while True:
            try:
                self._producer.produce(
                    self.topic, value=value, key=record.key, headers=headers, on_delivery=delivered
                )
                return
            except BufferError:
                if time.monotonic() >= deadline:
                    raise DeadLetterError("dead-letter queue stayed full") from None
                self._producer.poll(0.1)
            except KafkaException as exc:
                code = exc.args[0].code() if exc.args else KafkaError.UNKNOWN
                if _too_large(code) and not _truncated(headers):
                    value, headers = self._truncated(value, headers)
                    continue
                raise DeadLetterError(f"dead-letter write refused: {exc}") from None

    def _resend_truncated(self, record: Record, value: bytes | None, headers: Headers) -> None:
        value, headers = self._truncated(value, headers)
        try:
            self._produce(record, value, headers)
        except DeadLetterError as exc:
            self.pending -= 1
            self._on_done(record, str(exc))

    def _truncated(self, value: bytes | None, headers: Headers) -> tuple[bytes | None, Headers]:
        size = len(value or b"")
        return (value or b"")[: self._truncate_to], [
            *headers,
            ("tagging.original.size", str(size).encode()),
        ]

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery reports, waiting at most ``timeout`` seconds for one."""
        self._producer.poll(timeout)

    def flush(self, timeout: float) -> int:
        """Wait for outstanding writes; return how many are still pending."""
        return int(self._producer.flush(timeout))


def _truncated(headers: Headers) -> bool:
    return any(name == "tagging.original.size" for name, _ in headers)


def producer(config: dict[str, Any]) -> Producer:
    """The real librdkafka producer, logging through stdlib logging."""
    return Producer(config, logger=logging.getLogger("librdkafka"))
