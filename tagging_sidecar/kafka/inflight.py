"""How much the pipeline holds: records and bytes consumed and not yet settled, per partition,
and records delivered whose commit has not landed yet.

A record enters when it is consumed and decoded, and leaves when it is settled: delivered,
dead-lettered (the write acknowledged), parked on a halted partition, dropped on revoke, or
discarded as a late result. A delivered or dead-lettered record is then *awaiting* its commit
until a commit that covers it lands: a crash before that delivers it again. This is the one
place that says whether the pipeline is full.
"""

from __future__ import annotations

from collections import Counter

TP = tuple[str, int]


class InFlight:
    """Counts of records and payload bytes held, with the limits the consumer pauses at."""

    def __init__(self, max_records: int, max_bytes: int, max_uncommitted: int = 0) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        #: records held plus records awaiting their commit before reading stops (0: no bound)
        self.max_uncommitted = max_uncommitted
        self.records = 0
        self.bytes = 0
        #: records delivered or dead-lettered whose commit has not landed
        self.awaiting = 0
        self._by_partition: Counter[TP] = Counter()
        self._awaiting_by_partition: Counter[TP] = Counter()

    def admit(self, tp: TP, count: int, size: int) -> None:
        """``count`` records of ``size`` bytes in all entered the pipeline."""
        self.records += count
        self.bytes += size
        self._by_partition[tp] += count

    def release(self, tp: TP, count: int, size: int) -> None:
        """``count`` records of ``size`` bytes left the pipeline."""
        self.records -= count
        self.bytes -= size
        left = self._by_partition[tp] - count
        if left > 0:
            self._by_partition[tp] = left
        else:
            del self._by_partition[tp]

    def delivered(self, tp: TP, count: int) -> None:
        """``count`` records of ``tp`` were delivered (or dead-lettered): they await a commit."""
        self.awaiting += count
        self._awaiting_by_partition[tp] += count

    def awaiting_in(self, tp: TP) -> int:
        """Records of ``tp`` delivered since the last commit that landed for it."""
        return self._awaiting_by_partition.get(tp, 0)

    def confirm(self, tp: TP, count: int) -> None:
        """A commit covering ``count`` delivered records of ``tp`` landed (or there was nothing
        of ``tp`` to commit)."""
        left = self._awaiting_by_partition.get(tp, 0)
        count = min(count, left)
        self.awaiting -= count
        if left - count > 0:
            self._awaiting_by_partition[tp] = left - count
        else:
            self._awaiting_by_partition.pop(tp, None)

    def forget(self, tps: set[TP]) -> None:
        """Partitions revoked or lost: what they delivered is no longer this process's risk."""
        for tp in tps:
            self.awaiting -= self._awaiting_by_partition.pop(tp, 0)

    def full(self) -> bool:
        """Whether the consumer should stop reading until something settles or commits."""
        return self.records >= self.max_records or self.bytes >= self.max_bytes or self.room() <= 0

    def room(self, wanted: int | None = None) -> int:
        """How many more records may be read under ``max_uncommitted`` (``wanted`` caps it)."""
        if not self.max_uncommitted:
            return wanted if wanted is not None else self.max_records - self.records
        room = self.max_uncommitted - self.records - self.awaiting
        return room if wanted is None else min(room, wanted)

    def partitions(self) -> int:
        """How many partitions have records held."""
        return len(self._by_partition)

    def held(self, tps: set[TP]) -> int:
        """Records of these partitions still held."""
        return sum(self._by_partition.get(tp, 0) for tp in tps)
