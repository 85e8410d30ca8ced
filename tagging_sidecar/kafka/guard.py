"""The guard that stops a pipeline which fails nearly everything, before it empties a topic
into the dead-letter queue.

Outcomes are judged against outcomes of the same age: decoding is judged over decode results
(known as soon as a record is read), delivery over delivery results (known when the server
answers). Mixing them would count a decode failure at once and its neighbours' successes only
seconds later, so a small failure rate would look like a large one at start-up.
"""

from __future__ import annotations

from collections import deque


class _Window:
    """The last ``size`` outcomes, and how many of them failed."""

    def __init__(self, size: int) -> None:
        self._outcomes: deque[bool] = deque(maxlen=size)
        self.failures = 0

    def add(self, failed: bool, count: int) -> None:
        outcomes = self._outcomes
        limit = outcomes.maxlen or count
        for _ in range(min(count, limit)):
            if len(outcomes) == limit and outcomes[0]:
                self.failures -= 1
            outcomes.append(failed)
            if failed:
                self.failures += 1

    def __len__(self) -> int:
        return len(self._outcomes)


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
