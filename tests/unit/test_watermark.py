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
        self.tracked: set[int] = set()
        self.sent_done_above: set[int] = set()

    @rule(gap=st.integers(min_value=0, max_value=3))
    def dispatch(self, gap: int) -> None:
        offset = self.next_offset + gap  # gaps model compacted topics
        self.watermark.track(offset)
        self.in_flight.add(offset)
        self.tracked.add(offset)
        self.last_done_or_tracked = offset
        self.next_offset = offset + 1

    @precondition(lambda self: bool(self.in_flight))
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        offset = data.draw(st.sampled_from(sorted(self.in_flight)))
        self.in_flight.discard(offset)
        self.watermark.done(offset)

    @rule(gaps=st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=8))
    def dispatch_run(self, gaps: list[int]) -> None:
        offsets = []
        for gap in gaps:
            offsets.append(self.next_offset + gap)
            self.next_offset = offsets[-1] + 1
        self.watermark.track_all(offsets)
        self.in_flight.update(offsets)
        self.tracked.update(offsets)
        self.last_done_or_tracked = offsets[-1]

    @precondition(lambda self: bool(self.in_flight))
    @rule(data=st.data())
    def complete_many(self, data: st.DataObject) -> None:
        offsets = data.draw(st.lists(st.sampled_from(sorted(self.in_flight)), unique=True))
        self.in_flight.difference_update(offsets)
        self.watermark.done_all(sorted(offsets))

    @invariant()
    def done_offsets_above_the_position_are_the_metadata(self) -> None:
        position = self.watermark.position()
        done = self.tracked - self.in_flight
        expected = {o for o in done if position is not None and o > position}
        assert self.watermark.done_above() == expected

    @invariant()
    def a_change_of_the_metadata_is_committed_again(self) -> None:
        if self.committed_history and self.watermark.done_above() != self.sent_done_above:
            assert self.watermark.uncommitted() is not None

    @rule()
    def commit(self) -> None:
        position = self.watermark.uncommitted()
        if position is not None:
            self.watermark.mark_committed(position)
            self.watermark.sent_version = self.watermark.done_version
            self.committed_history.append(position)
            self.sent_done_above = set(self.watermark.done_above())

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
