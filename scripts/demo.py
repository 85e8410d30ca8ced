"""`make demo`: broker, sink, sidecar and producer on loopback, with live progress.

Starts everything it needs, produces demo records, shows produced / forwarded / committed and
active workers while the sidecar works, then stops everything it started and prints a summary.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"
# The local stack (broker, sink, sidecar) is the test harness's; it lives under tests/.
sys.path.insert(0, str(ROOT))


def main() -> int:
    """Run the demo; exit status 0 when every record was delivered and committed."""
    from tagging_sidecar.produce import produce
    from tests.support.harness import LocalStack, committed_and_end, scrape

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=10_000.0)
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args()

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    print("==> starting a local Kafka broker (KRaft, 127.0.0.1), the reference Havilah sink")
    print("    and the sidecar")
    stack = LocalStack(
        WORK,
        topic="tagging-demo",
        partitions=args.partitions,
        group=f"demo-{uuid.uuid4().hex[:6]}",
        sidecar_extra={"POOL__IDLE_TIMEOUT": "3"},
    )
    with stack:
        sidecar = stack.sidecar
        assert sidecar is not None and stack.sink is not None
        print(f"    broker at {stack.bootstrap}, sink at {stack.sink.target}")
        print(f"    sidecar metrics on http://127.0.0.1:{stack.http_port}/metrics")
        print(f"==> producing {args.count} records at up to {args.rate:.0f}/s")
        produced = [0]

        def run_producer() -> None:
            produce({"bootstrap.servers": stack.bootstrap}, stack.topic, args.count, rate=args.rate)
            produced[0] = args.count

        producer = threading.Thread(target=run_producer, daemon=True)
        producer.start()
        began = time.monotonic()
        committed = 0
        peak_workers = 0
        while True:
            time.sleep(1.0)  # the progress line's period
            if sidecar.proc.poll() is not None:
                print("!! the sidecar exited early; see .demo/sidecar.log")
                return 1
            metrics = scrape(stack.http_port)
            if not metrics:
                continue
            consumed = int(metrics.get("tagging_sidecar_records_consumed_total", 0))
            forwarded = int(metrics.get("tagging_sidecar_records_forwarded_total", 0))
            workers = int(metrics.get("tagging_sidecar_workers_active", 0))
            peak_workers = max(peak_workers, workers)
            committed, _end = committed_and_end(
                stack.bootstrap, stack.group, stack.topic, args.partitions
            )
            shown_produced = produced[0] if produced[0] else min(args.count, consumed)
            print(
                f"    t={time.monotonic() - began:5.1f}s produced>={shown_produced:>7} "
                f"forwarded={forwarded:>7} committed={committed:>7} active_workers={workers}",
                flush=True,
            )
            if produced[0] and committed >= args.count:
                break
            if time.monotonic() - began > 300:
                print("!! timed out waiting for the sidecar")
                return 1
        print("==> all records forwarded and committed; idle workers now leave (idle timeout 3 s)")
        for _ in range(10):
            time.sleep(1.0)  # the progress line's period
            workers = int(scrape(stack.http_port).get("tagging_sidecar_workers_active", 0))
            print(f"    active_workers={workers}", flush=True)
            if workers <= 1:
                break
        print("==> stopping the sidecar (SIGTERM)")
        status = sidecar.terminate(60)
        received = stack.received.read_text().split()
        elapsed = time.monotonic() - began
    print("==> stopped everything the demo started (logs in .demo/)")
    print("==> summary")
    print(f"    produced            {args.count}")
    print(f"    received by sink    {len(received)} ({len(set(received))} unique ids)")
    print(f"    committed           {committed}")
    print(f"    peak active workers {peak_workers}")
    print(f"    elapsed             {elapsed:.1f} s")
    print(f"    sidecar exit status {status}")
    ok = status == 0 and len(set(received)) == args.count and committed == args.count
    print("==> demo OK" if ok else "!! demo FAILED: see .demo/*.log")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
