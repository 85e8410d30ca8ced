"""A fake Havilah server behind the forwarder's Transport protocol: no sockets, no threads.

It behaves like servers that are not the reference sink: idempotent ones that end a stream with
``ALREADY_EXISTS`` at the first id they already hold, ones that reject some ids, abort a stream
halfway, count fewer records than they were sent, hang past the deadline, or speak only
``StreamMetric``. What it stored is what it acknowledged: tests compare against ``stored``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from tagging_sidecar.contract.tagging.v1.tagging_pb2 import (
    StreamMetricResponse,
    Tagging,
    TaggingBatch,
)
from tagging_sidecar.forward.havilah import BATCH_METHOD


class FakeRpcError(grpc.RpcError):
    """A final status, as grpc raises it."""

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        """The status code."""
        return self._code

    def details(self) -> str:
        """The status message."""
        return self._details


@dataclass
class FakeServer:
    """What the server does with the next calls; ``stored`` is what it kept, in order."""

    idempotent: bool = False
    #: validate the whole call before storing any of it (else store up to a rejected id)
    atomic: bool = False
    single_only: bool = False
    reject_ids: set[str] = field(default_factory=set)
    #: statuses to answer the next calls with, before storing anything
    fail_next: list[grpc.StatusCode] = field(default_factory=list)
    #: abort the next call with UNAVAILABLE after storing this many records
    abort_after: int | None = None
    #: answer ``received`` this much lower than what was stored, once
    undercount: int = 0
    #: raise this (a local failure, not a status) on the next call
    local_error: BaseException | None = None
    stored: list[str] = field(default_factory=list)
    calls: int = 0
    #: the deadline of each call, in order
    deadlines: list[float] = field(default_factory=list)
    hook: Callable[[], None] | None = None

    def stream(self, method: str, messages: list[bytes], timeout: float) -> StreamMetricResponse:
        """Handle one client-streaming call."""
        self.calls += 1
        self.deadlines.append(timeout)
        if self.hook is not None:
            self.hook()
        if self.local_error is not None:
            error, self.local_error = self.local_error, None
            raise error
        if self.fail_next:
            raise FakeRpcError(self.fail_next.pop(0), "injected")
        if method == BATCH_METHOD and self.single_only:
            raise FakeRpcError(grpc.StatusCode.UNIMPLEMENTED, "no StreamMetricBatch")
        ids = self._ids(method, messages)
        if self.atomic and self.reject_ids.intersection(ids):
            raise FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "rejected id")
        received = 0
        held = set(self.stored) if self.idempotent else set()
        for record_id in ids:
            if self.abort_after is not None and received >= self.abort_after:
                self.abort_after = None
                raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "aborted halfway")
            if record_id in self.reject_ids:
                raise FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "rejected id")
            if record_id in held:
                raise FakeRpcError(grpc.StatusCode.ALREADY_EXISTS, "id already stored")
            self.stored.append(record_id)
            if self.idempotent:
                held.add(record_id)
            received += 1
        shortfall, self.undercount = self.undercount, 0
        return StreamMetricResponse(received=max(0, received - shortfall))

    @staticmethod
    def _ids(method: str, messages: list[bytes]) -> list[str]:
        if method == BATCH_METHOD:
            return [r.id for m in messages for r in TaggingBatch.FromString(m).records]
        return [Tagging.FromString(m).id for m in messages]

    def wait_ready(self, timeout: float) -> bool:
        """Always ready."""
        return True

    def background(self, work: object) -> None:
        """No channel to watch."""

    def close(self) -> None:
        """Nothing to release."""
