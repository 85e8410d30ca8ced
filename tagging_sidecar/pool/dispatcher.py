"""What a worker runs: the seed's ``Before / Process / After`` lifecycle, made batch-aware."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Rejected(Generic[R]):
    """One item of a batch that the dispatcher gave up on, with the reason."""

    item: R
    error: BaseException


class EndOfWork(Exception):
    """Raised by :meth:`Dispatcher.process` to end its worker (the seed's ``io.EOF``).

    The batch it was given counts as not processed: it goes back to the front of the worker's
    queue, and a fresh activation of the worker (``before`` again) takes it, so nothing is lost.
    """


class Dispatcher(Protocol[R]):
    """One worker's connection to wherever items go. A pool makes one per worker slot."""

    def before(self) -> None:
        """Get ready to process (open a connection). Raising makes the pool retry with backoff."""

    def process(self, batch: Sequence[R]) -> Sequence[Rejected[R]]:
        """Deliver ``batch`` in order. Return the items given up on (empty if all were delivered).

        Raising an exception rejects the whole batch with it; raising :class:`EndOfWork` ends the
        worker and hands the batch back to the queue.
        """

    def after(self) -> None:
        """Release what ``before`` acquired; called once per successful ``before``."""
