"""How much the pipeline holds: records and bytes consumed and not yet settled, per partition.

A record enters when it is consumed and decoded, and leaves when it is settled: delivered,
dead-lettered (the write acknowledged), parked on a halted partition, dropped on revoke, or
discarded as a late result. This is the one place that says whether the pipeline is full.
"""

from __future__ import annotations

from collections import Counter

TP = tuple[str, int]


class InFlight:
    """Counts of records and payload bytes held, with the limits the consumer pauses at."""

    def __init__(self, max_records: int, max_bytes: int) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.records = 0
        self.bytes = 0
        self._by_partition: Counter[TP] = Counter()

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

    def full(self) -> bool:
        """Whether the consumer should stop reading until something settles."""
        return self.records >= self.max_records or self.bytes >= self.max_bytes

    def held(self, tps: set[TP]) -> int:
        """Records of these partitions still held."""
        return sum(self._by_partition.get(tp, 0) for tp in tps)
