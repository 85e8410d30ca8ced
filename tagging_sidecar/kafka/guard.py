"""The guard that stops a pipeline which fails nearly everything, before it empties a topic
into the dead-letter queue.

Outcomes are judged against outcomes of the same age: decoding is judged over decode results
(known as soon as a record is read), delivery over delivery results (known when the server
answers). Mixing them would count a decode failure at once and its neighbours' successes only
seconds later, so a small failure rate would look like a large one at start-up.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(slots=True)
class _Run:
    """Consecutive equal outcomes."""

    failed: bool
    count: int


class _Window:
    """The last ``size`` outcomes, and how many of them failed.

    Outcomes arrive in runs (a whole call's worth at once), so they are kept as runs of equal
    outcomes: adding costs the same for one outcome or a thousand.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._runs: deque[_Run] = deque()  # oldest first
        self._length = 0
        self.failures = 0

    def add(self, failed: bool, count: int) -> None:
        """Append ``count`` equal outcomes, dropping the oldest beyond the window."""
        count = min(count, self._size)
        if count <= 0:
            return
        runs = self._runs
        if runs and runs[-1].failed is failed:
            runs[-1].count += count
        else:
            runs.append(_Run(failed, count))
        self._length += count
        if failed:
            self.failures += count
        excess = self._length - self._size
        while excess > 0:
            oldest = runs[0]
            dropped = min(excess, oldest.count)
            oldest.count -= dropped
            if oldest.count == 0:
                runs.popleft()
            if oldest.failed:
                self.failures -= dropped
            self._length -= dropped
            excess -= dropped

    def __len__(self) -> int:
        return self._length


class FailureRateGuard:
    """Trips when more than ``max_ratio`` of the recent decodes, or of the recent deliveries,
    failed (judged once ``min_samples`` outcomes of that kind are known)."""

    def __init__(self, window: int = 1000, max_ratio: float = 0.5, min_samples: int = 100) -> None:
        self._decoded = _Window(window)
        self._delivered = _Window(window)
        self._max_ratio = max_ratio
        self._min_samples = min_samples

    def decoded(self, ok: int = 0, failed: int = 0) -> None:
        """Add decode outcomes."""
        self._decoded.add(False, ok)
        self._decoded.add(True, failed)

    def delivered(self, ok: int = 0, failed: int = 0) -> None:
        """Add delivery outcomes (acknowledged, or rejected by the server)."""
        self._delivered.add(False, ok)
        self._delivered.add(True, failed)

    def tripped(self) -> bool:
        """Whether either failure ratio is above the limit."""
        return any(
            len(w) >= self._min_samples and w.failures / len(w) > self._max_ratio
            for w in (self._decoded, self._delivered)
        )
