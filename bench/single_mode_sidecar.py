"""The whole sidecar in single mode against the Go sink: records per second and CPU per record.

Starts a local broker, preloads ``--count`` records in 6 partitions, then runs
``tagging-sidecar run`` (4 workers, queues of 1,024) against the Go sink until every offset is
committed, and prints the sidecar's CPU time per record (its start-up included). ``--path``
chooses single mode over HTTP/2 (``h2``), single mode over grpcio (``grpcio``), or batch mode
(``batch``).

    python bench/single_mode_sidecar.py --count 500000 --path h2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOPIC, GROUP, PARTITIONS = "single-mode", "single-mode-bench", 6


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    """Run one measurement and print one line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--path", choices=["h2", "grpcio", "batch"], default="h2")
    parser.add_argument("--limit", type=float, default=120.0, help="give up after this many s")
    args = parser.parse_args()

    from tagging_sidecar.produce import produce
    from tests.support.gosink import GoSink
    from tests.support.harness import SidecarProcess, committed_and_end, create_topic, sidecar_env
    from tests.support.kafka_broker import LocalKafka

    work = Path(tempfile.mkdtemp(prefix="single-mode-"))
    broker = LocalKafka(work / "kafka")
    bootstrap = broker.start()
    try:
        create_topic(bootstrap, TOPIC, PARTITIONS)
        produce({"bootstrap.servers": bootstrap}, TOPIC, args.count)
        with GoSink() as sink:
            env = sidecar_env(
                bootstrap,
                TOPIC,
                GROUP,
                sink.target,
                GRPC__MODE="batch" if args.path == "batch" else "single",
                GRPC__SINGLE_TRANSPORT="grpcio" if args.path == "grpcio" else "h2",
                POOL__MAX_WORKERS="4",
                POOL__QUEUE_SIZE="1024",
                LOG__LEVEL="WARNING",
            )
            started = time.perf_counter()
            sidecar = SidecarProcess(env, work / "sidecar.log")
            cpu = 0.0
            try:
                while time.perf_counter() - started < args.limit:
                    cpu = _cpu_seconds(sidecar.pid)
                    committed, end = committed_and_end(bootstrap, GROUP, TOPIC, PARTITIONS)
                    if end >= args.count and committed >= end:
                        break
                    time.sleep(0.5)
                wall = time.perf_counter() - started
                stats = sink.stats()
            finally:
                sidecar.terminate()
        print(
            f"{args.path}: {stats['records']:,} records ({stats['unique_ids']:,} unique) in "
            f"{wall:.1f} s = {stats['records'] / wall:,.0f} records/s; sidecar CPU {cpu:.1f} s = "
            f"{cpu / max(1, stats['records']) * 1e6:.1f} µs/record"
        )
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
