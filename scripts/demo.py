"""`make demo`: broker, sink, sidecar and producer on loopback, with live progress.

Starts everything it needs, produces demo records, shows produced / forwarded / committed and
active workers while the sidecar works, then stops everything it started and prints a summary.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"
KAFKA_LOCAL = ROOT / "scripts" / "kafka-local"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            match = re.match(rf"{re.escape(name)}(\{{[^}}]*\}})? (\S+)", line)
            if match:
                total += float(match.group(2))
    return total


def committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return sum(max(0, tp.offset) for tp in tps)
    finally:
        consumer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=10_000.0)
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args()

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    python = sys.executable
    started: list[subprocess.Popen[bytes]] = []
    kafka_dir = WORK / "kafka"
    print("==> starting a local Kafka broker (KRaft, 127.0.0.1)")
    bootstrap = subprocess.run(
        [str(KAFKA_LOCAL), "start", "--dir", str(kafka_dir)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(f"    broker at {bootstrap}")
    try:
        grpc_port = free_port()
        http_port = free_port()
        print(f"==> starting the reference Havilah sink on 127.0.0.1:{grpc_port}")
        sink_log = (WORK / "sink.log").open("wb")
        sink = subprocess.Popen(
            [
                python, "-m", "tagging_sidecar.cli", "sink",
                "--listen", f"127.0.0.1:{grpc_port}",
                "--record", str(WORK / "received.txt"),
                "--log-format", "json",
            ],
            stdout=sink_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        started.append(sink)
        topic = "tagging-demo"
        group = f"demo-{uuid.uuid4().hex[:6]}"
        subprocess.run(
            [
                python, "-m", "tagging_sidecar.cli", "produce", "--bootstrap", bootstrap,
                "--topic", topic, "--count", "0", "--partitions", str(args.partitions),
                "--log-format", "json",
            ],
            check=True, capture_output=True,
        )  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAGGING_")}
        env.update(
            {
                "TAGGING_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
                "TAGGING_KAFKA__TOPICS": topic,
                "TAGGING_KAFKA__GROUP_ID": group,
                "TAGGING_GRPC__TARGET": f"127.0.0.1:{grpc_port}",
                "TAGGING_HTTP__PORT": str(http_port),
                "TAGGING_POOL__IDLE_TIMEOUT": "3",
                "TAGGING_LOG__FORMAT": "json",
            }
        )
        print(f"==> starting the sidecar (metrics on http://127.0.0.1:{http_port}/metrics)")
        sidecar_log = (WORK / "sidecar.log").open("wb")
        sidecar = subprocess.Popen(
            [python, "-m", "tagging_sidecar.cli", "run"],
            env=env,
            stdout=sidecar_log,
            stderr=subprocess.STDOUT,
        )
        started.append(sidecar)
        print(f"==> producing {args.count} records at up to {args.rate:.0f}/s")
        produced = [0]

        def run_producer() -> None:
            subprocess.run(
                [
                    python, "-m", "tagging_sidecar.cli", "produce", "--bootstrap", bootstrap,
                    "--topic", topic, "--count", str(args.count), "--rate", str(args.rate),
                    "--log-format", "json",
                ],
                check=True, capture_output=True,
            )  # fmt: skip
            produced[0] = args.count

        producer = threading.Thread(target=run_producer, daemon=True)
        producer.start()
        began = time.monotonic()
        committed = 0
        peak_workers = 0
        while True:
            time.sleep(1.0)
            if sidecar.poll() is not None:
                print("!! the sidecar exited early; see .demo/sidecar.log")
                return 1
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{http_port}/metrics", timeout=2
                ) as r:
                    text = r.read().decode()
            except OSError:
                continue
            consumed = int(metric(text, "tagging_sidecar_records_consumed_total"))
            forwarded = int(metric(text, "tagging_sidecar_records_forwarded_total"))
            workers = int(metric(text, "tagging_sidecar_workers_active"))
            peak_workers = max(peak_workers, workers)
            committed = committed_total(bootstrap, group, topic, args.partitions)
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
            time.sleep(1.0)
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=2) as r:
                workers = int(metric(r.read().decode(), "tagging_sidecar_workers_active"))
            print(f"    active_workers={workers}", flush=True)
            if workers <= 1:
                break
        print("==> stopping the sidecar (SIGTERM)")
        sidecar.send_signal(signal.SIGTERM)
        status = sidecar.wait(60)
        received = (WORK / "received.txt").read_text().split()
        elapsed = time.monotonic() - began
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
    finally:
        for proc in reversed(started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        subprocess.run([str(KAFKA_LOCAL), "stop", "--dir", str(kafka_dir)], check=False)
        print("==> stopped everything the demo started (logs in .demo/)")


if __name__ == "__main__":
    sys.exit(main())
