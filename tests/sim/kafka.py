"""A deterministic Kafka with the librdkafka semantics the sidecar relies on.

* ``consume()`` returns records across partitions and runs rebalance callbacks *inside* the
  call, on the caller's thread, before it returns records (cooperative, incremental: only
  the partitions added or removed are passed);
* an application pause survives revoke and re-assign: only ``resume()`` clears it;
* asynchronous commits report through ``on_commit`` from a later ``consume()``; commits can be
  made to fail; a commit for a partition this member does not own fails per partition;
* ``committed()`` returns offsets with their metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

TP = tuple[str, int]
Rebalance = Callable[[Any, list[TopicPartition]], None]


@dataclass
class FakeMessage:
    """One record as ``consume()`` returns it."""

    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes | None
    _headers: list[tuple[str, str | bytes | None]] | None = None
    #: the Kafka timestamp in milliseconds (by default one per offset)
    _timestamp: int | None = None

    def error(self) -> KafkaError | None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, str | bytes | None]] | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        stamp = 1_000_000 + self._offset if self._timestamp is None else self._timestamp
        return (1, stamp)


@dataclass
class CommitResult:
    """A per-partition commit result (``TopicPartition.error`` cannot be set from Python)."""

    topic: str
    partition: int
    offset: int
    metadata: str | None = None
    error: KafkaError | None = None


@dataclass
class FakeBroker:
    """The logs and the group's committed offsets (with metadata)."""

    logs: dict[TP, list[FakeMessage]] = field(default_factory=dict)
    committed: dict[TP, tuple[int, str]] = field(default_factory=dict)

    def create(self, topic: str, partitions: int) -> None:
        """Create a topic."""
        for partition in range(partitions):
            self.logs.setdefault((topic, partition), [])

    def append(self, tp: TP, key: bytes | None, value: bytes | None) -> FakeMessage:
        """Produce one record."""
        log = self.logs[tp]
        message = FakeMessage(tp[0], tp[1], len(log), key, value)
        log.append(message)
        return message


class FakeConsumer:
    """One group member over a :class:`FakeBroker`; rebalances are scheduled by the test."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.assignment: set[TP] = set()
        self.paused: set[TP] = set()  # the application pause flag: survives revoke/assign
        self.positions: dict[TP, int] = {}
        self.fail_commits = False
        self.closed = False
        #: commits attempted for partitions this member did not own at the time
        self.foreign_commits: list[TP] = []
        self._events: list[tuple[str, list[TP]]] = []
        self._commit_reports: list[tuple[KafkaError | None, list[TopicPartition]]] = []
        self._callbacks: dict[str, Rebalance] = {}
        self.on_commit: Callable[[KafkaError | None, list[Any]], None] | None = None
        #: called with the timeout when ``consume()`` would block (the simulation's clock)
        self.on_wait: Callable[[float], None] | None = None

    # -- the test's controls --------------------------------------------------------------

    def schedule(self, kind: str, tps: list[TP]) -> None:
        """Run ``on_assign``/``on_revoke``/``on_lost`` for ``tps`` inside the next consume()."""
        self._events.append((kind, sorted(tps)))

    # -- librdkafka's API -----------------------------------------------------------------

    def subscribe(
        self, topics: list[str], on_assign: Rebalance, on_revoke: Rebalance, on_lost: Rebalance
    ) -> None:
        """Join; the first consume() assigns every partition of ``topics``."""
        self._callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}
        self.schedule("assign", [tp for tp in self.broker.logs if tp[0] in topics])

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        """Serve rebalances and commit reports, then return up to ``num_messages`` records."""
        assert not self.closed
        self._serve_events()
        self._serve_commit_reports()
        out: list[FakeMessage] = []
        if timeout > 0 and self.on_wait is not None and self._ready() < num_messages:
            # As librdkafka's: the call returns once ``num_messages`` are ready or the timeout
            # has passed, and time passes meanwhile.
            self.on_wait(timeout)
        for tp in sorted(self.assignment - self.paused):
            log = self.broker.logs[tp]
            position = self.positions[tp]
            take = log[position : position + num_messages - len(out)]
            out.extend(take)
            self.positions[tp] = position + len(take)
            if len(out) >= num_messages:
                break
        return out

    def _ready(self) -> int:
        return sum(
            len(self.broker.logs[tp]) - self.positions[tp] for tp in self.assignment - self.paused
        )

    def _serve_events(self) -> None:
        while self._events:
            kind, tps = self._events.pop(0)
            partitions = [TopicPartition(t, p) for t, p in tps]
            if kind == "assign":
                tps = [tp for tp in tps if tp not in self.assignment]
                for tp in tps:
                    committed = self.broker.committed.get(tp)
                    self.positions[tp] = committed[0] if committed else 0
                self.assignment.update(tps)
                self._callbacks["assign"](self, [TopicPartition(t, p) for t, p in tps])
            else:
                owned = [tp for tp in tps if tp in self.assignment]
                partitions = [TopicPartition(t, p) for t, p in owned]
                if kind == "lost":
                    self.assignment.difference_update(owned)  # gone before the callback
                self._callbacks[kind](self, partitions)
                self.assignment.difference_update(owned)

    def _serve_commit_reports(self) -> None:
        reports, self._commit_reports = self._commit_reports, []
        for error, partitions in reports:
            if self.on_commit is not None:
                self.on_commit(error, partitions)

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused.update((tp.topic, tp.partition) for tp in partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused.difference_update((tp.topic, tp.partition) for tp in partitions)

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[Any]:
        out = []
        for tp in partitions:
            offset, metadata = self.broker.committed.get((tp.topic, tp.partition), (-1001, ""))
            out.append(CommitResult(tp.topic, tp.partition, offset, metadata))
        return out

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool = True) -> Any:
        results = []
        for tp in offsets:
            key = (tp.topic, tp.partition)
            error = None
            if key not in self.assignment:
                self.foreign_commits.append(key)
                error = KafkaError(KafkaError.ILLEGAL_GENERATION)
            elif self.fail_commits:
                error = KafkaError(KafkaError.REQUEST_TIMED_OUT)
            else:
                self.broker.committed[key] = (tp.offset, tp.metadata or "")
            results.append(CommitResult(tp.topic, tp.partition, tp.offset, tp.metadata, error))
        if asynchronous:
            self._commit_reports.append((None, results))  # type: ignore[arg-type]
            return None
        return results

    def close(self) -> None:
        self.closed = True
