"""The commit watermark: examples, then a stateful property test."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tagging_sidecar.kafka.watermark import PartitionWatermark, Watermarks


def test_position_is_lowest_in_flight() -> None:
    w = PartitionWatermark()
    for offset in (10, 11, 12):
        w.track(offset)
    w.done(11)
    assert w.position() == 10
    w.done(10)
    assert w.position() == 12
    w.done(12)
    assert w.position() == 13
    assert w.in_flight == 0


def test_gaps_from_compaction_are_skipped() -> None:
    w = PartitionWatermark()
    for offset in (5, 9, 30):
        w.track(offset)
    w.done(9)
    w.done(5)
    assert w.position() == 30
    w.done(30)
    assert w.position() == 31


def test_nothing_tracked_means_nothing_to_commit() -> None:
    assert PartitionWatermark().uncommitted() is None


def test_commit_never_goes_backwards() -> None:
    w = PartitionWatermark()
    w.track(0)
    w.done(0)
    w.mark_committed(1)
    w.mark_committed(0)
    assert w.committed == 1
    assert w.uncommitted() is None


def test_out_of_order_tracking_is_refused() -> None:
    w = PartitionWatermark()
    w.track(4)
    with pytest.raises(ValueError, match="out of order"):
        w.track(3)


def test_forgotten_partition_drops_late_results() -> None:
    marks: Watermarks[tuple[str, int]] = Watermarks()
    old = marks.assign(("t", 0))
    old.track(1)
    marks.forget([("t", 0)])
    assert marks.get(("t", 0)) is None
    fresh = marks.assign(("t", 0))
    assert fresh is not old
    assert marks.uncommitted() == {}


class WatermarkMachine(RuleBasedStateMachine):
    """Random dispatch and completion orders against a simple model."""

    def __init__(self) -> None:
        super().__init__()
        self.watermark = PartitionWatermark()
        self.next_offset = 0
        self.in_flight: set[int] = set()
        self.last_done_or_tracked = -1
        self.committed_history: list[int] = []

    @rule(gap=st.integers(min_value=0, max_value=3))
    def dispatch(self, gap: int) -> None:
        offset = self.next_offset + gap  # gaps model compacted topics
        self.watermark.track(offset)
        self.in_flight.add(offset)
        self.last_done_or_tracked = offset
        self.next_offset = offset + 1

    @precondition(lambda self: bool(self.in_flight))
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        offset = data.draw(st.sampled_from(sorted(self.in_flight)))
        self.in_flight.discard(offset)
        self.watermark.done(offset)

    @rule()
    def commit(self) -> None:
        position = self.watermark.uncommitted()
        if position is not None:
            self.watermark.mark_committed(position)
            self.committed_history.append(position)

    @invariant()
    def position_is_lowest_in_flight(self) -> None:
        position = self.watermark.position()
        if self.in_flight:
            assert position == min(self.in_flight)
        elif self.last_done_or_tracked >= 0:
            assert position == self.last_done_or_tracked + 1

    @invariant()
    def nothing_in_flight_is_committed(self) -> None:
        committed = self.watermark.committed
        if committed is not None and self.in_flight:
            assert committed <= min(self.in_flight)

    @invariant()
    def commits_never_decrease(self) -> None:
        # A position may be committed again when only the done offsets above it changed
        # (they travel in the commit metadata); it never goes back.
        history = self.committed_history
        assert all(a <= b for a, b in itertools.pairwise(history))

    @invariant()
    def in_flight_count_matches(self) -> None:
        assert self.watermark.in_flight == len(self.in_flight)


WatermarkMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=60)
TestWatermarkProperties = WatermarkMachine.TestCase
