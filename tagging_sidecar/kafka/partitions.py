"""Every assigned partition's state: its watermark, paused for backpressure, or halted.

Two librdkafka facts shape this class:

* an application's ``pause()`` survives revoke and re-assign (the flag is cleared only by
  ``resume()``), so a partition handed back is explicitly resumed, or paused again, on assign;
* rebalance callbacks run inside ``consume()``, on the poll thread, so nothing here locks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

import structlog
from confluent_kafka import TopicPartition

from tagging_sidecar.kafka.watermark import PartitionWatermark

TP = tuple[str, int]

_log = structlog.get_logger("tagging_sidecar.partitions")


class Pausable(Protocol):
    """The part of a consumer that pauses and resumes fetching."""

    def pause(self, partitions: list[TopicPartition]) -> None:
        """Stop fetching these partitions."""

    def resume(self, partitions: list[TopicPartition]) -> None:
        """Fetch these partitions again."""


def _tps(keys: Iterable[TP]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition) for topic, partition in sorted(keys)]


class PartitionStates:
    """Owner of which partitions are assigned, paused or halted, and of their watermarks."""

    def __init__(self, consumer: Pausable) -> None:
        self._consumer = consumer
        self._watermarks: dict[TP, PartitionWatermark] = {}
        self._halted: dict[TP, str] = {}
        self._backpressure = False

    # -- assignment ---------------------------------------------------------------------------

    def assign(self, committed: dict[TP, tuple[int | None, frozenset[int]]]) -> None:
        """Start tracking partitions with their committed position and already-done offsets.

        The pause state is set explicitly either way, since librdkafka keeps an earlier pause.
        """
        for tp, (position, delivered) in committed.items():
            self._watermarks[tp] = PartitionWatermark(position, delivered)
            self._halted.pop(tp, None)
        if self._backpressure:
            self._consumer.pause(_tps(committed))
        else:
            self._consumer.resume(_tps(committed))

    def forget(self, tps: Iterable[TP]) -> None:
        """Stop tracking partitions (revoked or lost); late results for them are dropped."""
        for tp in tps:
            self._watermarks.pop(tp, None)
            self._halted.pop(tp, None)

    def reset(self, tp: TP, offset: int) -> PartitionWatermark:
        """Offsets went backwards (offset reset, log truncation): start the partition afresh.

        Results still in flight belong to the old watermark and are discarded when they come.
        """
        old = self._watermarks.get(tp)
        _log.warning(
            "offsets went backwards; partition state reset",
            topic=tp[0],
            partition=tp[1],
            offset=offset,
            previous=None if old is None else old.position(),
        )
        watermark = PartitionWatermark()
        self._watermarks[tp] = watermark
        return watermark

    # -- reading --------------------------------------------------------------------------

    def watermark(self, tp: TP) -> PartitionWatermark | None:
        """The partition's current watermark, or None when it is not assigned."""
        return self._watermarks.get(tp)

    def is_current(self, tp: TP, watermark: PartitionWatermark) -> bool:
        """Whether a result that carries ``watermark`` still belongs to this assignment."""
        return self._watermarks.get(tp) is watermark

    def __contains__(self, tp: object) -> bool:
        return tp in self._watermarks

    def assigned(self) -> list[TP]:
        """Assigned partitions, sorted."""
        return sorted(self._watermarks)

    def items(self) -> Iterator[tuple[TP, PartitionWatermark]]:
        """(partition, watermark) of every assigned partition."""
        return iter(list(self._watermarks.items()))

    def halted(self, tp: TP) -> bool:
        """Whether ``tp`` stopped at a record it cannot deliver."""
        return tp in self._halted

    def halted_reason(self) -> str | None:
        """Why a partition is halted (the first one), for ``/readyz``."""
        return next(iter(self._halted.values()), None)

    def paused_count(self) -> int:
        """How many assigned partitions are paused."""
        if self._backpressure:
            return len(self._watermarks)
        return len(self._halted)

    def in_flight(self) -> int:
        """Records tracked and not done over every partition."""
        return sum(w.in_flight for w in self._watermarks.values())

    # -- pausing --------------------------------------------------------------------------

    def halt(self, tp: TP, reason: str) -> None:
        """Stop reading ``tp`` until it is assigned again; its record stays uncommitted."""
        if tp in self._watermarks and tp not in self._halted:
            self._halted[tp] = reason
            self._consumer.pause(_tps([tp]))

    @property
    def backpressure(self) -> bool:
        """Whether every partition is paused because the pipeline is full."""
        return self._backpressure

    def pause_all(self) -> None:
        """Pause every assigned partition for backpressure (polling goes on)."""
        if not self._backpressure:
            self._backpressure = True
            self._consumer.pause(_tps(self._watermarks))

    def resume_all(self) -> None:
        """End backpressure: resume every assigned partition that is not halted."""
        if self._backpressure:
            self._backpressure = False
            self._consumer.resume(_tps(tp for tp in self._watermarks if tp not in self._halted))
