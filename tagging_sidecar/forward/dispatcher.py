"""The pool's dispatcher for the Havilah client: chunks of records in, rejections out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, Self, TypeVar

from tagging_sidecar.forward.havilah import HavilahClient
from tagging_sidecar.pool.dispatcher import Rejected


class Carrying(Protocol):
    """A chunk of records: their serialized ``Tagging`` bytes, in order."""

    payloads: list[bytes]

    def single(self, index: int) -> Self:
        """A chunk of the ``index``-th record alone."""


T = TypeVar("T", bound=Carrying)


class ForwardingDispatcher:
    """One pool worker's view of the shared client (the seed's ``Before/Process/After``).

    A batch is a sequence of chunks; each record the server rejected comes back as a
    one-record chunk with its error. Anything else raised means nothing of the batch counts
    as delivered (the pool reports it for every chunk).
    """

    def __init__(
        self, client: HavilahClient, ready_timeout: float, once_within: float | None = None
    ) -> None:
        self._client = client
        self._ready_timeout = ready_timeout
        #: one attempt per call, with at most this deadline, and a failure raised at once: for
        #: the pool's caller, whose thread must not wait out a downstream's outage
        self._once_within = once_within

    def before(self) -> None:
        """Wait for the channel, so a worker never streams into a broken connection."""
        self._client.wait_ready(self._ready_timeout)

    def process(self, batch: Sequence[T]) -> Sequence[Rejected[T]]:
        """Deliver every record of ``batch`` in order; return the ones the server rejected."""
        if len(batch) == 1:
            payloads = batch[0].payloads
        else:
            payloads = [payload for chunk in batch for payload in chunk.payloads]
        rejected = self._client.deliver(payloads, self._once_within)
        if not rejected:
            return ()
        # Index -> (chunk, index within it): rare, only for records the server refused.
        where = [(chunk, index) for chunk in batch for index in range(len(chunk.payloads))]
        out: list[Rejected[T]] = []
        for position, error in rejected:
            chunk, index = where[position]
            out.append(Rejected(chunk.single(index), error))
        return out

    def after(self) -> None:
        """Nothing to release: the channel is shared and closed by its owner."""
