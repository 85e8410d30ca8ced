"""The librdkafka configuration the sidecar runs with."""

from __future__ import annotations

from typing import Any

from tagging_sidecar.config import KafkaSettings

# Defaults chosen for at-least-once delivery and bounded memory; ``properties`` may override
# all but the managed keys (the settings model rejects those).
_DEFAULTS: dict[str, Any] = {
    "partition.assignment.strategy": "cooperative-sticky",
    "enable.partition.eof": False,
    # Bounded prefetch: at most ~8 MiB per consumer waiting in librdkafka's queues. More did
    # not read faster in the benchmark, and cost 36 MiB of peak RSS at 32 MiB.
    "queued.max.messages.kbytes": 8192,
    "fetch.queue.backoff.ms": 50,
    "statistics.interval.ms": 5000,
    "session.timeout.ms": 45000,
    "max.poll.interval.ms": 300000,
}


def consumer_config(settings: KafkaSettings, client_id: str) -> dict[str, Any]:
    """Consumer configuration: manual commits of the watermark, nothing stored automatically."""
    conf: dict[str, Any] = dict(_DEFAULTS)
    conf.update(settings.librdkafka_security())
    conf.update(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": settings.group_id,
            "client.id": client_id,
            "auto.offset.reset": settings.auto_offset_reset,
        }
    )
    conf.update(settings.properties)
    conf["enable.auto.commit"] = False
    conf["enable.auto.offset.store"] = False
    return conf


def producer_config(settings: KafkaSettings, client_id: str) -> dict[str, Any]:
    """Producer configuration (dead-letter topic, demo producer): idempotent, acks from all."""
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
    }
    conf.update(settings.librdkafka_security())
    return conf


# Consumer-only librdkafka properties: a producer would only warn that it ignores them.
_CONSUMER_ONLY = (
    "auto.",
    "fetch.",
    "queued.",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "group.",
    "isolation.level",
    "enable.partition.eof",
    "check.crcs",
    "consume.callback.max.messages",
)


def dead_letter_config(settings: KafkaSettings, client_id: str) -> dict[str, Any]:
    """The dead-letter producer: the consumer's security and client properties, compressed,
    and accepting records as large as the consumer can read (the broker judges the compressed
    batch; what it still refuses is written again truncated)."""
    conf = producer_config(settings, client_id)
    conf.update(
        {
            "compression.type": "zstd",
            "message.max.bytes": 64 * 1024 * 1024,
        }
    )
    conf.update(
        {
            key: value
            for key, value in settings.properties.items()
            if not key.startswith(_CONSUMER_ONLY)
        }
    )
    return conf
