"""The commit watermark: which offset of each partition is safe to commit.

Pure bookkeeping with no I/O and no locks; only the poll thread touches it. A partition's
committable position is the lowest offset still in flight, or one past the highest offset
dispatched when nothing is in flight. Offsets need not be contiguous (compacted topics,
transaction markers): only offsets actually seen are tracked.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar


class PartitionWatermark:
    """In-flight offsets of one partition, in the order they were dispatched."""

    __slots__ = (
        "_done",
        "_next",
        "_pending",
        "committed",
        "delivered_before",
        "done_version",
        "moved",
        "sent_version",
    )

    def __init__(
        self, committed: int | None = None, delivered_before: frozenset[int] = frozenset()
    ) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self._next: int | None = committed
        #: the last position reported as committed; never decreases
        self.committed: int | None = committed
        #: offsets above ``committed`` that a previous owner already delivered (commit metadata)
        self.delivered_before = delivered_before
        #: bumped whenever an offset above the position is done (the commit metadata changed)
        self.done_version = 0
        #: ``done_version`` of the last commit sent; -1 when it must be sent again
        self.sent_version = 0
        #: whether the position ever moved past the first offset tracked
        self.moved = False

    def track(self, offset: int) -> None:
        """Record that ``offset`` was dispatched; offsets must increase."""
        if self._pending and offset <= self._pending[-1]:
            raise ValueError(f"offset {offset} tracked out of order after {self._pending[-1]}")
        if not self._pending and self._next is not None and offset < self._next:
            raise ValueError(f"offset {offset} tracked below position {self._next}")
        self._pending.append(offset)

    def next_trackable(self) -> int | None:
        """The lowest offset :meth:`track` accepts next (None: any)."""
        return self._pending[-1] + 1 if self._pending else self._next

    def track_all(self, offsets: list[int]) -> None:
        """Track a run of offsets at once; the caller has checked that they increase and that
        the first is at least :meth:`next_trackable`."""
        if offsets:
            floor = self.next_trackable()
            if floor is not None and offsets[0] < floor:
                raise ValueError(f"offset {offsets[0]} tracked below {floor}")
            self._pending.extend(offsets)

    def done_all(self, offsets: list[int]) -> None:
        """:meth:`done` for each of ``offsets`` (a whole acknowledged chunk, in increasing
        order), in one pass."""
        pending = self._pending
        if not pending or not offsets:
            return
        head = pending[0]
        finished = self._done
        if offsets[0] >= head:
            finished.update(offsets)  # the usual case: none was passed already
        else:
            finished.update([offset for offset in offsets if offset >= head])
        if head not in finished:
            # The position stays: only the offsets done above it (the metadata) changed.
            self.done_version += 1
            return
        self._sweep()

    def done(self, offset: int) -> None:
        """Record that a tracked ``offset`` needs no more work; call once per offset."""
        pending = self._pending
        if not pending or offset < pending[0]:
            return
        self._done.add(offset)
        if offset != pending[0]:
            self.done_version += 1
            return
        self._sweep()

    def _sweep(self) -> None:
        """Move the position past the done offsets at the head (the head is done)."""
        pending = self._pending
        finished = self._done
        last = pending[0]
        while pending and pending[0] in finished:
            last = pending.popleft()
            finished.discard(last)
        self.moved = True
        if not pending:
            self._next = last + 1

    def done_above(self) -> set[int]:
        """Offsets done above the position: what the commit metadata carries to the next owner.

        Offsets a previous owner delivered and this one has not read yet stay in it, or the
        next commit would forget them.
        """
        if not self.delivered_before:
            return self._done
        position = self.position() or 0
        return self._done | {offset for offset in self.delivered_before if offset > position}

    def position(self) -> int | None:
        """The next offset to commit: the lowest in flight, or one past the last one done."""
        if self._pending:
            return self._pending[0]
        position = self._next
        if position is not None and self.delivered_before:
            # Offsets already delivered by a previous owner need not be read to be passed.
            while position in self.delivered_before:
                position += 1
        return position

    @property
    def in_flight(self) -> int:
        """How many tracked offsets are not done yet."""
        return len(self._pending) - len(self._done)

    def has_in_flight(self) -> bool:
        """Whether any tracked offset is not done yet."""
        return bool(self._pending)

    def mark_committed(self, position: int) -> None:
        """Remember that ``position`` was committed; a lower one is ignored."""
        if self.committed is None or position > self.committed:
            self.committed = position

    def uncommitted(self) -> int | None:
        """The position to commit if it moved past the last commit, or if offsets done above
        it changed since the last commit was sent (its metadata tells the next owner); else
        None."""
        position = self.position()
        if position is None:
            return None
        if self.committed is None and not self.moved and not self._done:
            return None  # nothing done yet: committing where reading started says nothing
        if self.committed is None or position > self.committed:
            return position
        if self._done and self.done_version != self.sent_version:
            return position
        return None


K = TypeVar("K", bound=Hashable)


class Watermarks(Generic[K]):
    """The watermarks of every assigned partition, keyed by e.g. ``(topic, partition)``."""

    def __init__(self) -> None:
        self._partitions: dict[K, PartitionWatermark] = {}

    def assign(self, key: K, committed: int | None = None) -> PartitionWatermark:
        """Start tracking a partition (again), forgetting any previous state of it."""
        watermark = PartitionWatermark(committed)
        self._partitions[key] = watermark
        return watermark

    def get(self, key: K) -> PartitionWatermark | None:
        """The current watermark of a partition, or None if it is not assigned."""
        return self._partitions.get(key)

    def forget(self, keys: Iterable[K]) -> None:
        """Stop tracking partitions; late results for them find no watermark and are dropped."""
        for key in keys:
            self._partitions.pop(key, None)

    def uncommitted(self) -> dict[K, int]:
        """Every partition whose position moved past its last commit."""
        moved = {}
        for key, watermark in self._partitions.items():
            position = watermark.uncommitted()
            if position is not None:
                moved[key] = position
        return moved

    def in_flight(self) -> int:
        """Records in flight over all partitions."""
        return sum(w.in_flight for w in self._partitions.values())

    def items(self) -> list[tuple[K, PartitionWatermark]]:
        """A snapshot of (partition, watermark) pairs."""
        return list(self._partitions.items())
