"""When the pool wants another worker and when an idle worker may leave (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ScalingPolicy:
    """The seed's traffic rule with hysteresis.

    Up: ``wanted = backlog // (queue_size // max_workers) + 1`` capped at ``max_workers``; a worker
    starts at once when ``wanted`` exceeds the active count and the active ones are busy.
    Down: only a worker that has had nothing to do for ``idle_timeout`` seconds leaves, and never
    below ``min_workers``. Fast up and slow down is the hysteresis that stops flapping.
    """

    min_workers: int = 1
    max_workers: int = 32
    queue_size: int = 128
    idle_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.max_workers < 1 or not 0 <= self.min_workers <= self.max_workers:
            raise ValueError("need 0 <= min_workers <= max_workers and max_workers >= 1")
        if self.queue_size < 1 or self.idle_timeout <= 0:
            raise ValueError("queue_size must be >= 1 and idle_timeout > 0")

    @property
    def backlog_per_worker(self) -> int:
        """How much backlog justifies one more worker (the seed's MaxQueueSize / MaxWorkers)."""
        return max(1, self.queue_size // self.max_workers)

    def wanted(self, backlog: int) -> int:
        """How many workers this backlog calls for."""
        if backlog <= 0:
            return self.min_workers
        return max(self.min_workers, min(self.max_workers, backlog // self.backlog_per_worker + 1))

    def may_retire(self, idle_for: float, active: int) -> bool:
        """Whether a worker idle for ``idle_for`` seconds may stop while ``active`` are running."""
        return idle_for >= self.idle_timeout and active > self.min_workers
