"""The pool's dispatcher for the Havilah client: chunks of records in, rejections out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from tagging_sidecar.forward.havilah import HavilahClient
from tagging_sidecar.pool.dispatcher import Rejected


class Carrying(Protocol):
    """Anything with the serialized ``Tagging`` bytes to forward."""

    @property
    def payload(self) -> bytes:
        """The record's wire bytes."""


T = TypeVar("T", bound=Carrying)


class ForwardingDispatcher:
    """One pool worker's view of the shared client (the seed's ``Before/Process/After``).

    A batch is a sequence of chunks; each record the server rejected comes back as a
    one-record chunk with its error. Anything else raised means nothing of the batch counts
    as delivered (the pool reports it for every chunk).
    """

    def __init__(self, client: HavilahClient, ready_timeout: float) -> None:
        self._client = client
        self._ready_timeout = ready_timeout

    def before(self) -> None:
        """Wait for the channel, so a worker never streams into a broken connection."""
        self._client.wait_ready(self._ready_timeout)

    def process(self, batch: Sequence[list[T]]) -> Sequence[Rejected[list[T]]]:
        """Deliver every record of ``batch`` in order; return the ones the server rejected."""
        records = [record for chunk in batch for record in chunk]
        rejected = self._client.deliver([record.payload for record in records])
        return [Rejected([records[index]], error) for index, error in rejected]

    def after(self) -> None:
        """Nothing to release: the channel is shared and closed by its owner."""
