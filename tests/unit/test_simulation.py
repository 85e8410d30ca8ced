"""The real stream processor against a deterministic Kafka, pool, downstream and clock.

Hypothesis interleaves produce, poll steps, completions in any order, dead-letter
acknowledgements, workers busy with one ordering unit, downstream outages, revoke / assign /
lost, crashes with restarts from the committed offsets, and SIGTERM. After every step:

* a committed offset never passes a record that is neither acknowledged nor dead-lettered,
  and the done offsets in the commit metadata are all really settled;
* a partition is never committed by a member that does not own it (lost partitions);
* without a crash or a lost partition, the server never receives a record twice (clean
  rebalances and clean stops repeat nothing);
* records and bytes in flight stay within their bounds;
and at quiescence every produced record was delivered or dead-lettered and every partition
(including one handed back while paused) was read to its end.
"""

from __future__ import annotations

import os

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tagging_sidecar.kafka.offsetmap import decode_done

from ..sim.downstream import FakeServer
from ..sim.kafka import TP, FakeBroker
from ..sim.world import FakeClock, Limits, Sidecar, record_value

PARTITIONS = [("t", 0), ("t", 1)]
KINDS = st.sampled_from(["ok"] * 6 + ["poison", "reject", "tombstone"])
SUBSETS = st.lists(st.sampled_from(PARTITIONS), min_size=1, max_size=2, unique=True)


class DeliveryMachine(RuleBasedStateMachine):
    """One sidecar at a time (restarted after a crash or a stop) over one broker."""

    def __init__(self) -> None:
        super().__init__()
        self.broker = FakeBroker()
        self.broker.create("t", len(PARTITIONS))
        self.server = FakeServer(atomic=True)
        self.clock = FakeClock()
        self.limits = Limits()
        self.kinds: dict[tuple[TP, int], tuple[str, str]] = {}
        self.dead_lettered: set[tuple[TP, int]] = set()
        self.repeats_allowed = False
        self.repeats_before = 0
        self.produced = 0
        self.sidecar = self._start()

    def _start(self) -> Sidecar:
        sidecar = Sidecar(self.broker, self.server, self.clock, self.limits)
        sidecar.pool.caller_runs = True  # as the real pool, until a rule says otherwise
        #: where this process's deliveries and dead letters begin, per partition
        self.risk_from = {tp: (len(self.server.stored), 0) for tp in PARTITIONS}
        self.consumers = [*getattr(self, "consumers", []), sidecar.consumer]
        return sidecar

    def _settled(self, tp: TP, offset: int) -> bool:
        record_id, kind = self.kinds[(tp, offset)]
        if kind == "tombstone":
            return True
        return record_id in self.stored or (tp, offset) in self.dead_lettered

    def _collect_dead_letters(self) -> None:
        for record in self.sidecar.dlq.acked:
            self.dead_lettered.add(((record.topic, record.partition), record.offset))

    # -- rules --------------------------------------------------------------------------

    @rule(tp=st.sampled_from(PARTITIONS), kind=KINDS, count=st.integers(1, 8))
    def produce(self, tp: TP, kind: str, count: int) -> None:
        for _ in range(count):
            self.produced += 1
            record_id = f"r{self.produced}"
            if kind == "reject":
                self.server.reject_ids.add(record_id)
            message = self.broker.append(
                tp, f"k{self.produced % 5}".encode(), record_value(record_id, kind)
            )
            self.kinds[(tp, message.offset())] = (record_id, kind)

    @rule(pick=st.integers(0, 50))
    def poll(self, pick: int) -> None:
        # Workers run while the loop polls: one batch may finish meanwhile.
        self.sidecar.processor.step()
        self.complete_a_batch(pick)

    @rule(pick=st.integers(0, 50))
    def complete_a_batch(self, pick: int) -> None:
        ready = self.sidecar.pool.runnable()
        if ready:
            self.sidecar.pool.run(ready[pick % len(ready)])

    @rule(on=st.booleans())
    def calls_on_the_poll_thread(self, on: bool) -> None:
        """The pool is idle and calls are quick (or no longer): the poll loop makes the call
        itself, one attempt, and a failed call's records go to a worker."""
        self.sidecar.pool.caller_runs = on

    @rule(count=st.integers(1, 5))
    def acknowledge_dead_letters(self, count: int) -> None:
        self.sidecar.dlq.ack(count)

    @rule(seconds=st.sampled_from([0.1, 0.5, 1.0, 2.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(failures=st.integers(1, 4))
    def downstream_outage(self, failures: int) -> None:
        import grpc

        self.server.fail_next.extend([grpc.StatusCode.UNAVAILABLE] * failures)

    @rule(tp=st.sampled_from(PARTITIONS), lane=st.integers(0, 3), offers=st.integers(1, 6))
    def a_worker_is_busy(self, tp: TP, lane: int, offers: int) -> None:
        """The worker holding one ordering unit refuses its next offers (its queue is full),
        while the other units' chunks go on."""
        self.sidecar.pool.refusals[(*tp, lane)] = offers

    @rule(one=st.booleans())
    def call_limit_moves(self, one: bool) -> None:
        """The pool's limit drops to one call (reads go out in whole chunks per partition) or
        rises (in their ordering units)."""
        self.sidecar.pool.limit = 1 if one else 2

    @rule(failing=st.booleans())
    def coordinator_outage(self, failing: bool) -> None:
        """Commits fail (the group coordinator is down or moving) until the next such rule: a
        revoke or a stop meanwhile cannot commit, so the next owner repeats records."""
        self.repeats_allowed = self.repeats_allowed or failing
        self.sidecar.consumer.fail_commits = failing

    @rule(count=st.integers(1, 30))
    def traffic_while_commits_fail(self, count: int) -> None:
        """Records keep coming while no commit lands: reading must stop at the bound."""
        self.coordinator_outage(True)
        for index in range(count):
            self.produce(PARTITIONS[index % len(PARTITIONS)], "ok", 1)
        for _ in range(count):
            self.sidecar.processor.step()
            while self.sidecar.pool.runnable():
                self.complete_a_batch(0)

    def _leaving(self, tps: list[TP], lost: bool = False) -> None:
        """Partitions left without a commit (lost, or the commit failed): whoever reads them
        next repeats what this process delivered of them (also while the revoke waited for
        their calls), crash or not. What a crash would add counts from here on for them."""
        if lost or self.sidecar.consumer.fail_commits:
            for tp in tps:
                self.risk_from[tp] = (len(self.server.stored), len(self.sidecar.dlq.acked))

    @rule(tps=SUBSETS)
    def revoke(self, tps: list[TP]) -> None:
        # Rebalance callbacks run inside the next consume(): poll once to have them run.
        self.sidecar.consumer.schedule("revoke", tps)
        self.sidecar.processor.step()
        self._leaving(tps)

    @rule(tps=SUBSETS, pick=st.integers(0, 50))
    def handed_away_and_back(self, tps: list[TP], pick: int) -> None:
        """A cooperative rebalance moves partitions away; while they are away the other
        partitions drain (``pick`` of 3: not at all, one batch, everything); a later rebalance
        hands them back."""
        self.revoke(tps)
        if pick % 3 == 1:
            self.complete_a_batch(pick)
        elif pick % 3 == 2:
            while self.sidecar.pool.runnable():
                self.complete_a_batch(0)
            self.poll(0)
        self.assign(tps)

    @rule(tp=st.sampled_from(PARTITIONS))
    def paused_partition_handed_away_and_back(self, tp: TP) -> None:
        """Fill the pipeline until the partitions pause, move one away, drain the rest, and
        hand it back: librdkafka still has it paused."""
        for other in PARTITIONS:
            self.produce(other, "ok", self.limits.max_records)
        for _ in range(10):
            if self.sidecar.partitions.backpressure:
                break
            self.sidecar.processor.step()
        self.revoke([tp])
        while self.sidecar.pool.runnable():
            self.complete_a_batch(0)
        self.poll(0)
        self.assign([tp])

    @rule(tps=SUBSETS)
    def assign(self, tps: list[TP]) -> None:
        self.sidecar.consumer.schedule("assign", tps)
        self.sidecar.processor.step()

    @rule(tps=SUBSETS)
    def lose(self, tps: list[TP]) -> None:
        self.repeats_allowed = True
        self.sidecar.consumer.schedule("lost", tps)
        self.sidecar.processor.step()
        self._leaving(tps, lost=True)

    @rule()
    def crash_and_restart(self) -> None:
        self.repeats_allowed = True
        self._collect_dead_letters()
        self.sidecar = self._start()

    @rule()
    def sigterm_and_restart(self) -> None:
        self.sidecar.processor.close(self.clock.now + 5.0)
        self._collect_dead_letters()
        self.sidecar = self._start()

    @rule()
    def quiesce(self) -> None:
        """Downstream healthy, every partition assigned: everything settles and is committed."""
        self.server.fail_next.clear()
        sidecar = self.sidecar
        sidecar.consumer.fail_commits = False
        sidecar.consumer.schedule("assign", PARTITIONS)
        for _ in range(500):
            sidecar.processor.step()
            while sidecar.pool.runnable():
                sidecar.pool.run(sidecar.pool.runnable()[0])
            sidecar.dlq.ack(len(sidecar.dlq.waiting))
            self.clock.now += 1.0
            self._collect_dead_letters()
            if self._all_done():
                break
        self._collect_dead_letters()
        unsettled = [key for key in self.kinds if not self._settled(*key)]
        assert unsettled == []
        assert self._all_done(), "a partition was never read to its end"
        assert sidecar.inflight.records == 0 and sidecar.inflight.bytes == 0
        # Everything read again after a crash or a loss has now been read: from here on,
        # any new repeat is a fault again.
        self.repeats_before = len(self.server.stored) - len(self.stored)
        self.repeats_allowed = False

    def _all_done(self) -> bool:
        return all(
            self.broker.committed.get(tp, (0, ""))[0] == len(self.broker.logs[tp])
            for tp in PARTITIONS
        ) and all(self._settled(*key) for key in self.kinds)

    # -- invariants -----------------------------------------------------------------------

    @property
    def stored(self) -> set[str]:
        return set(self.server.stored)

    @invariant()
    def commits_never_pass_an_unsettled_record(self) -> None:
        self._collect_dead_letters()
        for tp, (position, metadata) in self.broker.committed.items():
            for offset in range(position):
                assert self._settled(tp, offset), f"{tp}@{offset} committed but never settled"
            for offset in decode_done(position, metadata):
                assert self._settled(tp, offset), f"{tp}@{offset} marked done but not settled"

    @invariant()
    def a_partition_is_committed_only_by_its_owner(self) -> None:
        assert all(not consumer.foreign_commits for consumer in self.consumers)

    @invariant()
    def clean_rebalances_and_stops_repeat_nothing(self) -> None:
        if not self.repeats_allowed:
            assert len(self.server.stored) - len(self.stored) == self.repeats_before

    @invariant()
    def a_crash_now_would_repeat_at_most_the_bound(self) -> None:
        """What this process delivered or dead-lettered of the partitions it owns and no landed
        commit covers (what its successor would deliver again) stays within
        ``max_uncommitted``. A partition it no longer owns was left without a commit (lost, or
        the commit failed) and its next reader repeats it crash or not; a late dead-letter
        acknowledgement of such a partition is part of that repeat."""
        owned = set(self.sidecar.partitions.assigned())
        where = {record_id: key for key, (record_id, _) in self.kinds.items()}
        mine = [
            where[record_id]
            for index, record_id in enumerate(self.server.stored)
            if record_id in where and index >= self.risk_from[where[record_id][0]][0]
        ]
        mine += [
            ((r.topic, r.partition), r.offset)
            for index, r in enumerate(self.sidecar.dlq.acked)
            if index >= self.risk_from[(r.topic, r.partition)][1]
        ]
        covered: dict[TP, tuple[int, frozenset[int]]] = {
            tp: (position, decode_done(position, metadata))
            for tp, (position, metadata) in self.broker.committed.items()
        }

        def at_risk(tp: TP, offset: int) -> bool:
            if tp not in owned:
                return False
            position, done = covered.get(tp, (0, frozenset()))
            return offset >= position and offset not in done

        risky = {key for key in mine if at_risk(*key)}
        limit = self.limits.max_uncommitted
        assert len(risky) <= limit, f"{len(risky)} records a crash would repeat"

    @invariant()
    def in_flight_stays_within_bounds(self) -> None:
        inflight = self.sidecar.inflight
        limit = self.limits.max_records + self.limits.consume_batch
        assert 0 <= inflight.records <= limit
        assert inflight.bytes >= 0


# CI replays the same examples on every run (a red build must be reproducible); a developer's
# run explores new ones.
DeliveryMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    derandomize=os.environ.get("CI") == "true",
)
TestDeliveryMachine = DeliveryMachine.TestCase
