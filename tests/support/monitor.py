"""Watches a group's committed offsets in the background and remembers any step backwards."""

from __future__ import annotations

import threading
from types import TracebackType

from confluent_kafka import Consumer, KafkaException, TopicPartition


class OffsetMonitor:
    """Samples committed offsets every ``interval`` seconds; ``regressions`` lists any decrease."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        )
        self._tps = [TopicPartition(topic, p) for p in range(partitions)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="offset-monitor", daemon=True)
        self.highest = [-1] * partitions
        self.regressions: list[tuple[int, int, int]] = []
        self.samples = 0

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            try:
                committed = self._consumer.committed(self._tps, timeout=5)
            except KafkaException:
                continue  # the broker may be down on purpose
            self.samples += 1
            for tp in committed:
                if tp.offset < 0:
                    continue
                if tp.offset < self.highest[tp.partition]:
                    self.regressions.append((tp.partition, self.highest[tp.partition], tp.offset))
                self.highest[tp.partition] = max(self.highest[tp.partition], tp.offset)

    def __enter__(self) -> OffsetMonitor:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()
