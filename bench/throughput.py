"""Throughput benchmark: raw consume (R0), sink capacity (G) and the full sidecar (S), side by side.

One run starts its own broker (scripts/kafka-local) and reference sink, preloads a topic, then:

* R0 drains the topic with ``consume(num_messages=...)`` and does no work;
* G pushes the same records straight to the sink with the sidecar's gRPC client and RPC mode;
* S runs ``tagging-sidecar run`` from its first fetch until its last commit, then checks that the
  sink received every id and that the committed offsets equal the log-end offsets;
* L measures record latency (event time to sink receive) with the producer at half S's rate.

It prints a markdown table (also written to bench/results/) and draws a PNG of throughput,
backlog and active workers over time. Run ``make bench`` or ``python bench/throughput.py -h``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
# Broker, sink, sidecar processes and metrics come from the test harness under tests/ (imported
# inside the functions, like every other import of the phases).
sys.path.insert(0, str(ROOT))


@dataclass
class Phase:
    """What one measured phase did."""

    name: str
    records: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_mib: float = 0.0
    payload_bytes: int = 0
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.payload_bytes / self.seconds / 1e6 if self.seconds else 0.0

    @property
    def cpu_percent(self) -> float:
        return self.cpu_seconds / self.seconds * 100 if self.seconds else 0.0


def child_usage(pid: int) -> tuple[float, float]:
    """Wait for ``pid``; return (CPU seconds, peak RSS in MiB) from the kernel's accounting."""
    _, _, usage = os.wait4(pid, 0)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


# -- phases run in child processes (so their CPU and memory are their own) ---------------------


def phase_preload(args: argparse.Namespace) -> dict[str, Any]:
    from confluent_kafka import Producer

    from tagging_sidecar.produce import make_record

    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "linger.ms": 50,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 500000,
            "compression.type": "none",
        }
    )
    template = make_record("bench", 0, payload_pad=args.pad)
    payload_bytes = 0
    for index in range(args.count):
        template.id = f"b-{index:09d}"
        template.subject = f"user:{index % 1024}"
        value = template.SerializeToString()
        payload_bytes += len(value)
        while True:
            try:
                producer.produce(args.topic, value, key=template.subject.encode())
                break
            except BufferError:
                producer.poll(0.05)
        if index % 10000 == 0:
            producer.poll(0)
    if producer.flush(120):
        raise SystemExit("preload: records unconfirmed")
    return {"payload_bytes": payload_bytes}


def phase_r0(args: argparse.Namespace) -> dict[str, Any]:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": f"r0-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([args.topic])
    seen = 0
    payload = 0
    started = None
    while seen < args.count:
        messages = consumer.consume(10000, 1.0)
        if messages and started is None:
            started = time.perf_counter()
        for message in messages:
            if message.error() is None:
                seen += 1
                payload += len(message.value() or b"")
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return {"records": seen, "seconds": elapsed, "payload_bytes": payload}


def phase_g(args: argparse.Namespace) -> dict[str, Any]:
    """Push pre-serialized records to the sink with the sidecar's own client, many threads."""
    from tagging_sidecar.config import GrpcSettings
    from tagging_sidecar.forward import connect
    from tagging_sidecar.produce import make_record

    settings = GrpcSettings(target=args.target, mode=args.mode)
    client = connect(settings)
    client.wait_ready(10)
    template = make_record("g", 0, payload_pad=args.pad)
    batch_size = args.batch
    threads = args.threads
    per_thread = args.count // threads // batch_size

    def work(worker: int) -> None:
        for n in range(per_thread):
            batch = []
            for i in range(batch_size):
                template.id = f"g-{worker}-{n}-{i}"
                batch.append(template.SerializeToString())
            client.deliver(batch)

    started = time.perf_counter()
    pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - started
    records = per_thread * batch_size * threads
    return {
        "records": records,
        "seconds": elapsed,
        "payload_bytes": records * len(template.SerializeToString()),
    }


PHASES = {"preload": phase_preload, "r0": phase_r0, "g": phase_g}


def run_child_phase(name: str, extra: list[str]) -> tuple[dict[str, Any], float, float]:
    proc = subprocess.Popen(
        [PYTHON, __file__, "--child", name, *extra], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    cpu, rss = child_usage(proc.pid)
    proc.returncode = 0
    return json.loads(out.strip().splitlines()[-1]), cpu, rss


# -- the sidecar phase ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by ``pid`` (and its threads)."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def run_sidecar_phase(
    args: argparse.Namespace,
    bootstrap: str,
    target: str,
    record_file: Path,
    work: Path,
    neighbours: dict[str, int],
) -> tuple[Phase, list[dict[str, float]]]:
    from tests.support.harness import (
        SidecarProcess,
        committed_and_end,
        free_port,
        scrape,
        sidecar_env,
    )

    http_port = free_port()
    group = f"bench-{time.time_ns()}"
    env = sidecar_env(
        bootstrap,
        args.topic,
        group,
        target,
        commit_interval=None,
        GRPC__MODE=args.mode,
        HTTP__PORT=str(http_port),
        LOG__LEVEL="WARNING",
        PROCESSES=str(args.processes),
    )
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value
    log = work / f"sidecar-{args.mode}.log"
    proc = SidecarProcess(env, log).proc
    samples: list[dict[str, float]] = []
    last: dict[str, float] = {}
    neighbour_cpu = {name: cpu_seconds(pid) for name, pid in neighbours.items()}
    first_fetch = None
    began = time.perf_counter()
    finished = None
    while time.perf_counter() - began < args.timeout:
        time.sleep(0.5)
        metrics = scrape(http_port)
        now = time.perf_counter()
        if metrics:
            last = metrics
            metrics["t"] = now - began
            samples.append(metrics)
            if first_fetch is None and metrics.get("tagging_sidecar_records_consumed_total", 0) > 0:
                first_fetch = now - 0.25  # midpoint of the sampling interval
        if first_fetch is not None and (
            metrics.get("tagging_sidecar_records_forwarded_total", 0) >= args.count
            or args.processes > 1
        ):
            committed, end = committed_and_end(bootstrap, group, args.topic, args.partitions)
            if committed >= end:
                finished = time.perf_counter()
                break
    neighbour_cpu = {
        name: cpu_seconds(pid) - neighbour_cpu[name] for name, pid in neighbours.items()
    }
    idle_cpu = None
    if finished is not None and args.processes == 1:
        # Nothing left to read: how much CPU does a waiting sidecar burn?
        time.sleep(2)
        before = cpu_seconds(proc.pid)
        time.sleep(args.idle_seconds)
        idle_cpu = (cpu_seconds(proc.pid) - before) / args.idle_seconds * 100
    proc.send_signal(signal.SIGTERM)
    cpu, rss = child_usage(proc.pid)
    if finished is None or first_fetch is None:
        raise SystemExit(f"sidecar did not finish within {args.timeout} s; see {log.name}")
    received = record_file.read_text().split()
    unique = set(received)
    committed, end = committed_and_end(bootstrap, group, args.topic, args.partitions)
    phase = Phase(
        name=f"S ({args.mode}, {args.processes} process{'es' if args.processes > 1 else ''})",
        records=args.count,
        seconds=finished - first_fetch,
        cpu_seconds=cpu,
        peak_rss_mib=rss,
        payload_bytes=int(args.payload_bytes),
        notes=f"sink got {len(unique)} unique ids; committed {committed} of {end}",
        extra={
            "all_ids": len(unique) == args.count,
            "committed_equals_end": committed == end,
            "idle_cpu_percent": idle_cpu,
            "mean_batch": last.get("tagging_sidecar_batch_size_records_sum", 0)
            / max(1.0, last.get("tagging_sidecar_batch_size_records_count", 0)),
            "neighbour_cpu_percent": {
                name: round(used / (finished - began) * 100) for name, used in neighbour_cpu.items()
            },
        },
    )
    return phase, samples


def measure_latency(
    args: argparse.Namespace, bootstrap: str, rate: float, work: Path
) -> dict[str, float]:
    """Produce at ``rate`` with a running sidecar; the sink measures event time to receive."""
    from collections.abc import Iterable

    import grpc
    from confluent_kafka import Producer

    from tagging_sidecar.contract.tagging.v1 import tagging_pb2
    from tagging_sidecar.produce import make_record
    from tagging_sidecar.sink import SinkServer
    from tests.support.harness import (
        SidecarProcess,
        create_topic,
        free_port,
        ready,
        scrape,
        sidecar_env,
    )

    latencies: list[float] = []

    class LatencySink(SinkServer):
        def accept(
            self, records: Iterable[tagging_pb2.Tagging], context: grpc.ServicerContext
        ) -> tagging_pb2.StreamMetricResponse:
            batch = list(records)
            now = time.time()
            latencies.extend(now - r.event_time.ToMicroseconds() / 1e6 for r in batch)
            return super().accept(batch, context)

    sink = LatencySink("127.0.0.1:0")
    target = f"127.0.0.1:{sink.start()}"

    topic = f"latency-{time.time_ns()}"
    create_topic(bootstrap, topic, args.partitions)
    http_port = free_port()
    env = sidecar_env(
        bootstrap,
        topic,
        f"lat-{time.time_ns()}",
        target,
        commit_interval=None,
        GRPC__MODE=args.mode,
        HTTP__PORT=str(http_port),
        LOG__LEVEL="WARNING",
    )
    sidecar = SidecarProcess(env, work / "sidecar-latency.log")
    try:
        # Measure the steady state: start producing once the sidecar is in its group and connected.
        while not ready(http_port):
            time.sleep(0.2)
        # linger.ms=1 made this producer its own bottleneck (many tiny requests, a growing
        # queue that showed up as latency); 5 ms keeps up and adds at most 5 ms.
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        # Warm up until records flow end to end: a fresh consumer needs a moment to find its
        # offsets and start fetching, and that start-up is not the latency being measured.
        warm_until = time.perf_counter() + 30
        warm = 0
        while not latencies and time.perf_counter() < warm_until:
            for partition in range(args.partitions):
                record = make_record("warmup", warm, payload_pad=args.pad)
                producer.produce(topic, record.SerializeToString(), partition=partition)
                warm += 1
            producer.poll(0.2)
        time.sleep(1.0)
        latencies.clear()
        count = int(rate * args.latency_seconds)
        started = time.perf_counter()
        for index in range(count):
            record = make_record("lat", index, payload_pad=args.pad)
            while True:
                try:
                    producer.produce(topic, record.SerializeToString(), key=record.subject.encode())
                    break
                except BufferError:  # the pipeline is behind: let the producer catch up
                    producer.poll(0.05)
            ahead = (index + 1) / rate - (time.perf_counter() - started)
            if ahead > 0:
                producer.poll(ahead)
            elif index % 100 == 0:
                producer.poll(0)
        producer.flush(30)
        deadline = time.perf_counter() + 60
        while time.perf_counter() < deadline:
            if scrape(http_port).get("tagging_sidecar_records_forwarded_total", 0) >= count + warm:
                break
            time.sleep(0.2)
    finally:
        # Stop what this phase started, also when it fails half way.
        sidecar.terminate(60)
        sink.stop()
    ordered = sorted(latencies)
    if not ordered:
        raise SystemExit("latency phase: nothing arrived")
    return {
        "rate_per_s": round(rate),
        "records": len(ordered),
        "p50_ms": round(ordered[len(ordered) // 2] * 1000, 1),
        "p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


# -- orchestration -------------------------------------------------------------------------------


def plot(samples: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = [s["t"] for s in samples]
    forwarded = [s.get("tagging_sidecar_records_forwarded_total", 0) for s in samples]
    rates = [0.0] + [
        (forwarded[i] - forwarded[i - 1]) / max(1e-9, times[i] - times[i - 1])
        for i in range(1, len(samples))
    ]
    figure, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    axes[0].plot(times, rates)
    axes[0].set_ylabel("records/s")
    axes[1].plot(times, [s.get("tagging_sidecar_pool_backlog_records", 0) for s in samples])
    axes[1].plot(times, [s.get("tagging_sidecar_inflight_records", 0) for s in samples])
    axes[1].legend(["pool backlog", "in flight"])
    axes[1].set_ylabel("records")
    axes[2].plot(times, [s.get("tagging_sidecar_workers_active", 0) for s in samples])
    axes[2].set_ylabel("active workers")
    axes[2].set_xlabel("seconds since start")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def table(phases: list[Phase], r0: Phase, g: Phase | None) -> str:
    lines = [
        "| phase | records | seconds | records/s | MB/s | CPU % of a core | peak RSS MiB "
        "| S/R0 | S/G |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in phases:
        is_s = p.name.startswith("S")
        s_r0 = f"{p.rate / r0.rate:.2f}" if is_s and r0.rate else ""
        s_g = f"{p.rate / g.rate:.2f}" if is_s and g is not None and g.rate else ""
        lines.append(
            f"| {p.name} | {p.records:,} | {p.seconds:.2f} | {p.rate:,.0f} | {p.mb_per_s:.1f} | "
            f"{p.cpu_percent:.0f} | {p.peak_rss_mib:.0f} | {s_r0} | {s_g} |"
        )
    return "\n".join(lines)


def main() -> int:
    from tests.support.harness import LocalStack

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--pad", type=int, default=90, help="label padding: ~200-byte records")
    parser.add_argument("--mode", default="batch", choices=["batch", "single"])
    parser.add_argument("--processes", type=int, default=1, help="TAGGING_PROCESSES for S")
    parser.add_argument("--env", action="append", default=[], help="extra KEY=VALUE for S")
    parser.add_argument("--skip-g", action="store_true")
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument(
        "--latency-fraction",
        type=float,
        action="append",
        help="measure latency at this fraction of S's rate (repeatable; default 0.5 and 0.25)",
    )
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=128, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.latency_fraction = args.latency_fraction or [0.5, 0.25]
    if args.child:
        print(json.dumps(PHASES[args.child](args)))
        return 0

    work = RESULTS / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    print(f"==> broker and sink (results in {work})", flush=True)
    stack = LocalStack(
        work, topic=args.topic, partitions=args.partitions, sidecar=False,
        sink_args=("--summary-interval", "30"),
    )  # fmt: skip
    try:
        with stack:
            assert stack.sink is not None
            bootstrap, target, record_file = stack.bootstrap, stack.sink.target, stack.received
            sink_pid = stack.sink.proc.pid
            print(
                f"==> preloading {args.count:,} records over {args.partitions} partitions",
                flush=True,
            )
            common = ["--bootstrap", bootstrap, "--topic", args.topic, "--count", str(args.count),
                      "--pad", str(args.pad)]  # fmt: skip
            started = time.perf_counter()
            preload, _, _ = run_child_phase("preload", common)
            args.payload_bytes = preload["payload_bytes"]
            per_record = args.payload_bytes / args.count
            print(
                f"    done in {time.perf_counter() - started:.1f} s "
                f"({per_record:.0f} bytes per record)",
                flush=True,
            )

            print("==> R0: raw consume(num_messages=10000), no work", flush=True)
            out, cpu, rss = run_child_phase("r0", common)
            r0 = Phase(
                "R0 (raw consume)", out["records"], out["seconds"], cpu, rss, out["payload_bytes"]
            )
            phases = [r0]
            g = None
            if not args.skip_g:
                print(f"==> G: records pushed straight to the sink ({args.mode} mode)", flush=True)
                g_count = min(args.count, 300_000)
                out, cpu, rss = run_child_phase(
                    "g", ["--target", target, "--mode", args.mode, "--count", str(g_count),
                          "--pad", str(args.pad)],
                )  # fmt: skip
                g = Phase(
                    f"G (sink capacity, {args.mode})",
                    out["records"],
                    out["seconds"],
                    cpu,
                    rss,
                    out["payload_bytes"],
                )
                phases.append(g)
                record_file.write_text("")  # G's ids are not part of the sidecar check
            print("==> S: the sidecar, first fetch to last commit", flush=True)
            broker_pid = int((stack.broker.dir / "pid").read_text())
            s, samples = run_sidecar_phase(
                args,
                bootstrap,
                target,
                record_file,
                work,
                {"sink": sink_pid, "broker": broker_pid},
            )
            phases.append(s)
            plot(samples, work / "sidecar.png", f"tagging-sidecar draining {args.count:,} records")
            latencies = []
            if not args.skip_latency:
                for fraction in args.latency_fraction:
                    rate = s.rate * fraction
                    print(
                        f"==> L: latency at {rate:,.0f} records/s ({fraction:.0%} of S)", flush=True
                    )
                    latencies.append(measure_latency(args, bootstrap, rate, work))
            report = [
                f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
                f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
                f"Python {platform.python_version()}; broker, sink and sidecar share the machine.",
                "",
                table(phases, r0, g),
                "",
                f"S check: {s.notes}.",
                f"Idle sidecar after the drain: {s.extra['idle_cpu_percent']:.2f} % of a core."
                if s.extra["idle_cpu_percent"] is not None
                else "",
                f"Records per gRPC call during S: {s.extra['mean_batch']:.0f} on average.",
                "CPU of the neighbours during S (% of a core): "
                + ", ".join(f"{k} {v}" for k, v in s.extra["neighbour_cpu_percent"].items())
                + ".",
            ]
            for latency in latencies:
                report.append(
                    f"Latency (event time to sink receive) at {latency['rate_per_s']:,} records/s: "
                    f"p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms, "
                    f"max {latency['max_ms']} ms over {latency['records']:,} records."
                )
            if g is not None and s.rate / max(1.0, g.rate) > 0.8:
                report.append("S/G is near 1: the sink is the bottleneck; S measures the sink.")
            text = "\n".join(report)
            (work / "report.md").write_text(text + "\n")
            (work / "phases.json").write_text(json.dumps([asdict(p) for p in phases], indent=2))
            print("\n" + text)
            print(f"\nplot: {work / 'sidecar.png'}")
            ok = s.extra["all_ids"] and s.extra["committed_equals_end"]
            return 0 if ok else 1
    finally:
        shutil.rmtree(stack.broker.dir / "data", ignore_errors=True)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE))
    sys.exit(main())
