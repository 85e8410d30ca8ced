"""Benchmark of the adaptive worker pool alone (no Kafka, no gRPC).

Reports the per-record dispatch overhead, how fast a burst gets enough workers, how fast the
pool shrinks back to ``min_workers`` after traffic stops, and the CPU an idle pool uses.
Then it runs both scaling policies (the seed's backlog rule with its defaults, and the adaptive
call limit with its defaults) against two simulated downstreams:

* **fast**: the call costs only the sidecar's own CPU (a fixed cost per call plus a little per
  record, holding the GIL as a real client's serialization does), so more calls at once buy
  nothing;
* **slow**: 4 servers take 50 microseconds per record each (sleeping, so calls run in
  parallel), after the same client CPU, so up to 4 calls at once buy throughput.

Each is run with a backlog (records/s over the run and over its second half, once the limit
found its level; CPU per 100,000 records; records per call; the limit at the end) and at a
fixed rate (latency from dispatch to done, p50 and p99, over the second half of the records).
Run with ``make bench-pool`` or ``python bench/pool_bench.py``.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Sequence
from typing import Any

from tagging_sidecar.observe.logs import configure_logging
from tagging_sidecar.pool import AdaptiveLimit, LimitTuning, Rejected, ScalingPolicy, WorkerPool

# The defaults of TAGGING_POOL__* under each scaling policy (tagging_sidecar/config.py).
SEED_BATCH = 128
ADAPTIVE_BATCH = 2048
LINGER = 0.005
# The sidecar's shape: 6 partitions x 32 key lanes, a consume() batch of 2,000 records.
UNITS = 6 * 32
CONSUMED = 2000


class SleepyDispatcher:
    """Takes ``delay`` seconds per batch (0: returns at once)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def before(self) -> None:
        return None

    def process(self, batch: Sequence[Any]) -> Sequence[Rejected[Any]]:
        if self.delay:
            time.sleep(self.delay)
        return []

    def after(self) -> None:
        return None


def _done(_items: Sequence[Any], _rejected: Sequence[Rejected[Any]]) -> None:
    return None


def dispatch_overhead(records: int, chunk: int, ordering_keys: int) -> float:
    """Microseconds per record for dispatch plus hand-off, with a dispatcher that does nothing."""
    policy = ScalingPolicy(min_workers=1, max_workers=32, queue_size=1024, idle_timeout=30)
    pool: WorkerPool[Any] = WorkerPool(lambda: SleepyDispatcher(0), _done, policy)
    pool.start()
    items = records // chunk
    started = time.perf_counter()
    for i in range(items):
        pool.dispatch(i, key=i % ordering_keys if ordering_keys else None, weight=chunk)
    pool.stop(drain=True)
    return (time.perf_counter() - started) / records * 1e6


def burst_to_workers(max_workers: int, burst: int) -> tuple[float, int]:
    """Seconds from the first record of a burst until the pool runs ``max_workers`` workers."""
    policy = ScalingPolicy(min_workers=1, max_workers=max_workers, queue_size=128, idle_timeout=30)
    pool: WorkerPool[Any] = WorkerPool(lambda: SleepyDispatcher(0.005), _done, policy)
    pool.start()
    reached = threading.Event()
    elapsed = [0.0]
    started = time.perf_counter()

    def watch() -> None:
        while pool.stats().active_workers < max_workers:
            time.sleep(0.0005)
        elapsed[0] = time.perf_counter() - started
        reached.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for i in range(burst):
        pool.dispatch(i)
    reached.wait(30)
    workers = pool.stats().active_workers
    pool.stop(drain=True)
    return elapsed[0], workers


def back_to_min(idle_timeout: float) -> float:
    """Seconds from the end of traffic until only ``min_workers`` remain."""
    policy = ScalingPolicy(min_workers=1, max_workers=32, queue_size=128, idle_timeout=idle_timeout)
    done = threading.Event()
    remaining = [5000]
    lock = threading.Lock()

    def on_done(items: Sequence[Any], _rejected: Sequence[Rejected[Any]]) -> None:
        with lock:
            remaining[0] -= len(items)
            if remaining[0] == 0:
                done.set()

    pool: WorkerPool[Any] = WorkerPool(lambda: SleepyDispatcher(0.002), on_done, policy)
    pool.start()
    for i in range(5000):
        pool.dispatch(i)
    done.wait(60)
    traffic_ended = time.perf_counter()
    while pool.stats().active_workers > 1:
        time.sleep(0.01)
    elapsed = time.perf_counter() - traffic_ended
    pool.stop()
    return elapsed


def idle_cpu(seconds: float) -> float:
    """Percent of one core used by a started, idle pool with ``min_workers=4``."""
    policy = ScalingPolicy(min_workers=4, max_workers=32, queue_size=128, idle_timeout=30)
    pool: WorkerPool[Any] = WorkerPool(lambda: SleepyDispatcher(0), _done, policy)
    pool.start()
    time.sleep(0.5)
    cpu_before = time.process_time()
    wall_before = time.perf_counter()
    time.sleep(seconds)
    used = time.process_time() - cpu_before
    wall = time.perf_counter() - wall_before
    pool.stop()
    return used / wall * 100


def _burn(seconds: float) -> None:
    """Spend ``seconds`` of CPU holding the GIL, as a client serializing a call does."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class Downstream:
    """A simulated downstream: client CPU per call and per record, then server time."""

    def __init__(
        self, call_cpu: float, record_cpu: float, servers: int = 0, per_record: float = 0.0
    ) -> None:
        self.call_cpu = call_cpu
        self.record_cpu = record_cpu
        self.per_record = per_record
        self.servers = threading.BoundedSemaphore(servers) if servers else None
        self.calls = 0
        self._lock = threading.Lock()

    def before(self) -> None:
        return None

    def process(self, batch: Sequence[list[float]]) -> Sequence[Rejected[list[float]]]:
        records = sum(len(chunk) for chunk in batch)
        with self._lock:
            self.calls += 1
        _burn(self.call_cpu + self.record_cpu * records)
        if self.servers is not None:
            with self.servers:
                time.sleep(self.per_record * records)
        return []

    def after(self) -> None:
        return None


DOWNSTREAMS = {
    "fast": lambda: Downstream(call_cpu=0.0003, record_cpu=2e-6),
    "slow": lambda: Downstream(call_cpu=0.0003, record_cpu=2e-6, servers=4, per_record=50e-6),
}


def downstream_run(
    downstream: str, scaling: str, records: int, rate: float | None
) -> dict[str, float]:
    """Push ``records`` through a pool the way the sidecar does; measure what came out.

    Chunks of consumed records are offered per ordering unit, and a refused offer waits for
    space, as the stream processor does. With ``rate`` the records arrive at that rate;
    without, they are all waiting (a backlog).
    """
    shared = DOWNSTREAMS[downstream]()
    latencies: list[tuple[float, int]] = []
    # Latency counts only the records sent in the second half: the first half is warm-up
    # (the adaptive limit finding its level).
    warm = [float("inf")]
    half = [0.0]  # when half of the records were done
    lock = threading.Lock()
    done = threading.Event()
    left = [records]

    def on_done(chunks: Sequence[list[float]], _rejected: Sequence[Rejected[Any]]) -> None:
        now = time.perf_counter()
        count = 0
        with lock:
            for chunk in chunks:
                if chunk[0] >= warm[0]:
                    latencies.append((now - chunk[0], len(chunk)))
                count += len(chunk)
            left[0] -= count
            if left[0] <= records // 2 and not half[0]:
                half[0] = now
            if left[0] <= 0:
                done.set()

    policy = ScalingPolicy(min_workers=1, max_workers=32, queue_size=128, idle_timeout=30)
    limiter = None if scaling == "seed" else AdaptiveLimit(LimitTuning(max_limit=32))
    pool: WorkerPool[list[float]] = WorkerPool(
        lambda: shared,
        on_done,
        policy,
        max_batch=SEED_BATCH if scaling == "seed" else ADAPTIVE_BATCH,
        linger=LINGER,
        limiter=limiter,
    )
    pool.start()
    cpu_before = time.process_time()
    started = time.perf_counter()
    sent = 0
    while sent < records:
        if sent >= records // 2 and warm[0] == float("inf"):
            warm[0] = time.perf_counter()
        count = min(CONSUMED, records - sent)
        if rate is not None:
            wait = started + (sent + count) / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        now = time.perf_counter()
        chunks: dict[int, list[float]] = {}
        for i in range(sent, sent + count):
            chunks.setdefault(i % UNITS, [now]).append(now)
        for unit, chunk in chunks.items():
            chunk.pop()  # the first element stamps the chunk; keep one entry per record
            while not pool.offer(chunk, key=unit, weight=len(chunk)):
                pool.wait_for_space(0.05)
        sent += count
    done.wait(120)
    finished = time.perf_counter()
    elapsed = finished - started
    cpu = time.process_time() - cpu_before
    limit = pool.stats().call_limit
    pool.stop()
    latencies.sort()
    total = sum(count for _, count in latencies)

    def quantile(q: float) -> float:
        seen = 0
        for latency, count in latencies:
            seen += count
            if seen >= q * total:
                return latency * 1000
        return latencies[-1][0] * 1000

    return {
        "records_per_s": records / elapsed,
        "second_half_records_per_s": (records - records // 2) / max(1e-9, finished - half[0]),
        "cpu_s_per_100k": cpu / records * 100_000,
        "records_per_call": records / max(1, shared.calls),
        "limit_at_end": float(limit if limiter is not None else policy.max_workers),
        "p50_ms": quantile(0.5),
        "p99_ms": quantile(0.99),
    }


def downstream_table(records: int, paced: dict[str, float]) -> list[str]:
    """Seed against adaptive on both downstreams, as Markdown table rows."""
    rows = [
        "| downstream | scaling | records/s (backlog) | second half | CPU-s per 100k "
        "| records per call | limit at end | rate (records/s) | p50 ms | p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for downstream in DOWNSTREAMS:
        for scaling in ("seed", "adaptive"):
            flat = downstream_run(downstream, scaling, records, None)
            timed = downstream_run(downstream, scaling, records, paced[downstream])
            rows.append(
                f"| {downstream} | {scaling} | {flat['records_per_s']:,.0f} "
                f"| {flat['second_half_records_per_s']:,.0f} "
                f"| {flat['cpu_s_per_100k']:.2f} | {flat['records_per_call']:,.0f} "
                f"| {flat['limit_at_end']:.0f} | {paced[downstream]:,.0f} "
                f"| {timed['p50_ms']:.1f} | {timed['p99_ms']:.1f} |"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--downstream-records",
        type=int,
        default=120_000,
        help="records per run against the simulated downstreams (0: skip them)",
    )
    parser.add_argument(
        "--only-downstreams", action="store_true", help="run only the seed/adaptive comparison"
    )
    args = parser.parse_args()
    configure_logging("console", "WARNING")
    if args.downstream_records:
        # Paced at a rate both policies sustain on a 2-core machine, to compare latency.
        rows = downstream_table(args.downstream_records, {"fast": 20_000.0, "slow": 20_000.0})
        print("\n".join(rows) + "\n")
    if args.only_downstreams:
        return
    results = {
        "dispatch_us_per_record_single_unordered": dispatch_overhead(args.records, 1, 0),
        "dispatch_us_per_record_single_keyed": dispatch_overhead(args.records, 1, 64),
        "dispatch_us_per_record_chunks_of_100_keyed": dispatch_overhead(args.records, 100, 64),
    }
    seconds, workers = burst_to_workers(32, 20_000)
    results["burst_to_32_workers_ms"] = seconds * 1000
    results["burst_workers_reached"] = workers
    results["back_to_min_workers_s_idle_timeout_1s"] = back_to_min(1.0)
    results["idle_cpu_percent_of_a_core"] = idle_cpu(args.idle_seconds)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print("| measure | value |\n|---|---|")
    for name, value in results.items():
        print(f"| {name} | {value:.3f} |" if isinstance(value, float) else f"| {name} | {value} |")


if __name__ == "__main__":
    main()
