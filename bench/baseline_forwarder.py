"""The baseline: a plain single-threaded forwarder, measured the same way as the sidecar.

One thread: ``consume()`` what is ready (blocking only until the first record when none is), one
``StreamMetricBatch`` call with those records, an asynchronous commit once the server acknowledged
them all. No pool, no retries, no dead letters.
Prints ``{"first_fetch": <unix time>}`` when records first arrive and, after SIGTERM, a JSON line
with the polls made and the records per poll (what was in flight at once).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
from confluent_kafka import Consumer, KafkaError, KafkaException

from tagging_sidecar.contract.tagging.v1.tagging_pb2 import StreamMetricResponse
from tagging_sidecar.forward.wire import batch_messages


def main() -> int:
    """Forward until SIGTERM, then commit synchronously and say what was done."""
    parser = argparse.ArgumentParser(description=__doc__)
    for flag in ("--bootstrap", "--topic", "--group", "--target"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--batch", type=int, default=2000, help="records per consume()")
    parser.add_argument(
        "--fill",
        type=float,
        default=0.0,
        help="seconds a poll waits for --batch records (0: it takes what is ready once one is)",
    )
    args = parser.parse_args()
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stop.append(signum))
    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([args.topic])
    channel = grpc.insecure_channel(args.target)
    call: grpc.StreamUnaryMultiCallable[bytes, StreamMetricResponse] = channel.stream_unary(
        "/tagging.v1.Havilah/StreamMetricBatch",
        response_deserializer=StreamMetricResponse.FromString,
    )
    polls = records = largest = 0
    while not stop:
        if args.fill > 0:
            ready = consumer.consume(args.batch, args.fill)
        else:
            # librdkafka's consume(n, timeout) waits until n records or the timeout: wait for
            # one record only, then take whatever else is ready, so no record waits for company.
            ready = consumer.consume(1, 0.1)
            if ready:
                ready += consumer.consume(args.batch - 1, 0)
        messages = [m for m in ready if m.error() is None]
        if not messages:
            continue
        if not records:
            print(json.dumps({"first_fetch": time.time()}), flush=True)
        payloads = [m.value() or b"" for m in messages]
        answer = call(iter(list(batch_messages(payloads, 4 * 1024 * 1024 - 64))), timeout=30)
        if answer.received != len(payloads):  # no retries here: a baseline that fails says so
            raise SystemExit(f"server acknowledged {answer.received} of {len(payloads)}")
        consumer.commit(asynchronous=True)
        polls, records, largest = polls + 1, records + len(messages), max(largest, len(messages))
    print(json.dumps({"polls": polls, "records": records, "largest_poll": largest}), flush=True)
    try:
        consumer.commit(asynchronous=False)
    except KafkaException as error:  # _NO_OFFSET: everything was committed already
        if error.args[0].code() != KafkaError._NO_OFFSET:
            raise
    consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
