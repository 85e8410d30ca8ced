"""Live load for the latency phase: records at a fixed rate, each stamped when it is produced.

Runs in a process of its own, so neither the sink nor the orchestrating benchmark shares its
interpreter. Every ``--tick`` seconds it produces the records that are due by then (a small
batch: rate x tick), so the rate holds without a growing local queue:

* to Kafka (``--bootstrap``/``--topic``) with ``linger.ms`` of one tick, and a local queue
  bounded to ``--queue-seconds`` of records; a full queue is counted, never waited out silently;
* or, with ``--direct TARGET``, straight to a Havilah server, one ``StreamMetricBatch`` call per
  tick: no Kafka and no sidecar, the generator's own floor.

A record's ``event_time`` is set the moment it is handed to the producer (or to the call). The
last line on stdout is JSON: records produced, seconds, the achieved rate, how far the schedule
fell behind at worst, how often the queue was full, and Kafka's own acknowledgement latency
(produce() to delivery report, sampled).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka import KafkaError, Message, Producer

from tagging_sidecar.forward.wire import batch_messages
from tagging_sidecar.produce import make_record

BATCH_METHOD = "/tagging.v1.Havilah/StreamMetricBatch"
ACK_SAMPLE_EVERY = 20


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (0 when empty)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0


def main() -> int:
    """Produce at the rate asked for, then print what was done as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap")
    parser.add_argument("--topic")
    parser.add_argument("--direct", metavar="TARGET", help="call this Havilah server instead")
    parser.add_argument("--rate", type=float, required=True, help="records per second")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--run-id", default="live")
    parser.add_argument("--pad", type=int, default=90)
    parser.add_argument("--tick", type=float, default=0.002, help="seconds between batches")
    parser.add_argument("--queue-seconds", type=float, default=1.0)
    args = parser.parse_args()

    template = make_record(args.run_id, 0, payload_pad=args.pad)
    acks_ms: list[float] = []
    send: Any
    if args.direct:
        import grpc

        channel = grpc.insecure_channel(args.direct)
        grpc.channel_ready_future(channel).result(timeout=30)
        call: grpc.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(BATCH_METHOD)

        def send(values: list[tuple[bytes, bytes]]) -> int:
            payloads = [value for _, value in values]
            call(iter(list(batch_messages(payloads, 4 * 1024 * 1024 - 64))), timeout=30)
            return 0

        def finish() -> None:
            channel.close()

    else:
        queue_max = max(1000, int(args.rate * args.queue_seconds))
        producer = Producer(
            {
                "bootstrap.servers": args.bootstrap,
                "linger.ms": max(0.0, args.tick * 1000),
                "queue.buffering.max.messages": queue_max,
                "compression.type": "none",
                "acks": "all",
            }
        )

        def acked(started_ns: int) -> Any:
            def report(error: KafkaError | None, _message: Message) -> None:
                if error is None:
                    acks_ms.append((time.time_ns() - started_ns) / 1e6)

            return report

        def send(values: list[tuple[bytes, bytes]]) -> int:
            full = 0
            for index, (key, value) in enumerate(values):
                callback = acked(time.time_ns()) if index % ACK_SAMPLE_EVERY == 0 else None
                while True:
                    try:
                        producer.produce(args.topic, value, key=key, on_delivery=callback)
                        break
                    except BufferError:
                        full += 1
                        producer.poll(args.tick)
            producer.poll(0)
            return full

        def finish() -> None:
            if producer.flush(60):
                raise SystemExit("live producer: records left unconfirmed")

    produced = 0
    queue_full = 0
    schedule_lag_max = 0.0
    total = int(args.rate * args.seconds)
    started = time.perf_counter()
    while produced < total:
        now = time.perf_counter() - started
        due = min(total, int(now * args.rate) + 1)
        schedule_lag_max = max(schedule_lag_max, (due - produced - 1) / args.rate)
        values = []
        for index in range(produced, due):
            template.id = f"{args.run_id}-{index}"
            template.subject = f"user:{index % 64}"
            template.event_time.FromNanoseconds(time.time_ns())
            values.append((template.subject.encode(), template.SerializeToString()))
        queue_full += send(values)
        produced = due
        ahead = produced / args.rate - (time.perf_counter() - started)
        if ahead > 0:
            time.sleep(min(ahead, args.tick))
    elapsed = time.perf_counter() - started
    finish()
    print(
        json.dumps(
            {
                "records": produced,
                "seconds": round(elapsed, 3),
                "rate": round(produced / elapsed),
                "schedule_lag_max_ms": round(schedule_lag_max * 1000, 1),
                "queue_full": queue_full,
                "ack_p50_ms": round(quantile(acks_ms, 0.5), 2),
                "ack_p99_ms": round(quantile(acks_ms, 0.99), 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
