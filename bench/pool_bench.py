"""Benchmark of the adaptive worker pool alone (no Kafka, no gRPC).

Reports the per-record dispatch overhead, how fast a burst gets enough workers, how fast the
pool shrinks back to ``min_workers`` after traffic stops, and the CPU an idle pool uses.
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
from tagging_sidecar.pool import Rejected, ScalingPolicy, WorkerPool


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    configure_logging("console", "WARNING")
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
