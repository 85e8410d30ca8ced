"""End-to-end benchmark: throughput, latency and cost of the sidecar next to a plain forwarder.

One run starts its own broker (scripts/kafka-local), preloads a topic, sends live traffic
through it until it acknowledges in milliseconds (a fresh broker is slow at first), and
measures:

* **R0**: a raw ``consume(num_messages=10000)`` drain that does no other work;
* for each **setting** (the sidecar on its defaults in batch and in single mode, and the
  single-threaded baseline forwarder in bench/baseline_forwarder.py; each against a fast sink and
  against a sink that spends 50 µs per record):

  - **S**: the preloaded topic drained, from the first fetch until the last commit, with a check
    that the sink received every id and that the committed offsets equal the log-end offsets; the
    forwarder's CPU-seconds, its peak RSS, and ``inflight_records`` sampled from /metrics (max and
    mean), from which the crash-duplicate bound follows;
  - **L**: latency (the sink's receive time minus the record's event time, measured by the sink)
    at 10, 25, 50 and 75 % of that setting's S, with bench/live_producer.py in a process of its
    own producing at a fixed rate; against the fast sink, first also at fixed live rates (2,000,
    8,000 and 16,000 records/s), the same for every forwarder; and the sidecar's per-stage latency
    from /metrics when it has ``tagging_sidecar_stage_seconds``;

* **direct**: the same producer calling the sink itself (no Kafka, no forwarder) at the rates of
  the first setting: the floor of the load generator and the sink;
* the sidecar's idle CPU once its topic is drained.

It prints markdown tables (also written to bench/results/<time>/report.md) and draws
latency.png and drain.png there. ``python bench/throughput.py -h`` lists the options.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
PYTHON = sys.executable
# Broker, sink, sidecar processes and metrics come from the shared harness under tests/.
sys.path.insert(0, str(ROOT))

from tests.support.gosink import GoSink, go_executable  # noqa: E402
from tests.support.harness import (  # noqa: E402 - after the path fix
    SidecarProcess,
    committed_and_end,
    create_topic,
    free_port,
    http_get,
    parse_metrics,
    ready,
    sidecar_env,
)
from tests.support.kafka_broker import LocalKafka  # noqa: E402
from tests.support.pysink import PySink, parse_duration  # noqa: E402

FRACTIONS = (0.10, 0.25, 0.50, 0.75)
# Fixed live rates, the same for every forwarder, at which the fast-sink settings are also
# measured: the range where a sidecar should add no more latency than a plain forwarder.
LIVE_RATES = (2_000.0, 8_000.0, 16_000.0)
METRIC = "tagging_sidecar_"


# -- the sink ------------------------------------------------------------------------------------


class Sink(Protocol):
    """What the benchmark needs of a measuring sink (the Python one or the Go one)."""

    target: str

    def stats(self) -> dict[str, Any]:
        """calls, records and latency_ms {count, p50, p90, p99, max} since the last reset, and
        unique_ids since the sink started."""
        ...

    def reset(self) -> None:
        """Forget what was received."""
        ...


def sink_name() -> str:
    """Which sink :func:`open_sink` starts."""
    if go_executable() is not None:
        return "the Go sink (bench/gosink), a process of its own"
    return "the Python measuring sink (tests/support/pysink.py; no Go here), a process of its own"


@contextmanager
def open_sink(per_record: str, single_only: bool, log: Path) -> Iterator[Sink]:
    """A measuring sink for one setting: the one place that chooses its implementation. The Go
    sink when Go is installed (it keeps up with anything the sidecar sends on this machine),
    else the Python one, with the same interface."""
    if go_executable() is not None:
        with GoSink(per_record=parse_duration(per_record), single_only=single_only) as sink:
            yield sink
    else:
        with PySink(per_record=per_record, single_only=single_only, log=log) as sink:
            yield sink


# -- settings and forwarders ---------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One configuration measured end to end."""

    key: str
    forwarder: str  # "sidecar" or "baseline"
    mode: str  # "batch" or "single"
    per_record: str  # the sink's time per record: "0" or e.g. "50us"

    @property
    def label(self) -> str:
        """Human name for tables."""
        who = "sidecar" if self.forwarder == "sidecar" else "baseline forwarder"
        sink = "fast sink" if self.per_record == "0" else f"sink {self.per_record}/record"
        return f"{who}, {self.mode}, {sink}"


SETTINGS = {
    s.key: s
    for s in (
        Setting("batch-fast", "sidecar", "batch", "0"),
        Setting("batch-50us", "sidecar", "batch", "50us"),
        Setting("single-fast", "sidecar", "single", "0"),
        Setting("single-50us", "sidecar", "single", "50us"),
        Setting("baseline-fast", "baseline", "batch", "0"),
        Setting("baseline-50us", "baseline", "batch", "50us"),
    )
}


def cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its children (TAGGING_PROCESSES > 1)."""
    import psutil

    process = psutil.Process(pid)
    total = 0.0
    for each in (process, *process.children(recursive=True)):
        times = each.cpu_times()
        total += times.user + times.system
    return total


class Forwarder:
    """The sidecar or the baseline forwarder as a child process, on one topic and group."""

    def __init__(
        self,
        setting: Setting,
        args: argparse.Namespace,
        topic: str,
        target: str,
        log: Path,
        baseline_args: Sequence[str] = (),
    ) -> None:
        self.setting = setting
        self.group = f"{setting.key}-{time.time_ns()}"
        self.http_port = free_port() if setting.forwarder == "sidecar" else None
        self.first_fetch: float | None = None
        self.summary: dict[str, Any] = {}
        self._sidecar: SidecarProcess | None = None
        self._log: IO[str] | None = None
        if setting.forwarder == "sidecar":
            env = sidecar_env(
                args.bootstrap, topic, self.group, target, commit_interval=None,
                GRPC__MODE=setting.mode, HTTP__PORT=str(self.http_port),
                PROCESSES=str(args.processes),
            )  # fmt: skip
            env.update(item.split("=", 1) for item in args.env)
            self._sidecar = SidecarProcess(env, log)
            self.proc: subprocess.Popen[Any] = self._sidecar.proc
        else:
            self._log = log.open("w")
            self.proc = subprocess.Popen(
                [PYTHON, str(BENCH / "baseline_forwarder.py"), "--bootstrap", args.bootstrap,
                 "--topic", topic, "--group", self.group, "--target", target, *baseline_args],
                stdout=subprocess.PIPE, stderr=self._log, text=True,
            )  # fmt: skip
            threading.Thread(target=self._read_baseline, daemon=True).start()

    def _read_baseline(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            out = json.loads(line)
            if "first_fetch" in out:
                self.first_fetch = out["first_fetch"]
            else:
                self.summary = out

    @property
    def pid(self) -> int:
        """The forwarder's process id."""
        return int(self.proc.pid)

    def metrics_text(self) -> str:
        """The sidecar's /metrics ('' for the baseline or when it does not answer)."""
        if self.http_port is None:
            return ""
        status, text = http_get(f"http://127.0.0.1:{self.http_port}/metrics", timeout=2)
        return text if status == 200 else ""

    def is_ready(self) -> bool:
        """/readyz for the sidecar; the baseline is ready once started."""
        return self.http_port is None or ready(self.http_port)

    def stop(self) -> tuple[float, float]:
        """SIGTERM, wait; (CPU seconds, peak RSS in MiB) from the kernel's accounting."""
        self.proc.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(self.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        if self._sidecar is not None:
            self._sidecar.cleanup()
        deadline = time.monotonic() + 5
        while self.setting.forwarder == "baseline" and not self.summary:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if self._log is not None:
            self._log.close()
        return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Wait for another process to do something; False if it did not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


# -- phases run in child processes (so their CPU and memory are their own) ---------------------


def phase_preload(args: argparse.Namespace) -> dict[str, Any]:
    """Write ``args.count`` records to ``args.topic`` as fast as the broker takes them."""
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
        template.id = f"{args.topic}-{index:09d}"
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
    """Drain the topic with consume(10000) and nothing else."""
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
    started = None
    while seen < args.count:
        messages = consumer.consume(10000, 1.0)
        if messages and started is None:
            started = time.perf_counter()
        seen += sum(1 for message in messages if message.error() is None)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return {"records": seen, "seconds": elapsed}


PHASES = {"preload": phase_preload, "r0": phase_r0}


def run_child_phase(name: str, extra: list[str]) -> tuple[dict[str, Any], float]:
    """Run a phase in a child process; (its JSON answer, its CPU seconds)."""
    proc = subprocess.Popen(
        [PYTHON, __file__, "--child", name, *extra], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"phase {name} failed ({proc.returncode})")
    return json.loads(out.strip().splitlines()[-1]), usage.ru_utime + usage.ru_stime


def run_producer(
    args: argparse.Namespace,
    rate: float,
    seconds: float,
    run_id: str,
    *,
    topic: str | None = None,
    direct: str | None = None,
) -> dict[str, Any]:
    """bench/live_producer.py in its own process, to Kafka or straight to a sink."""
    where = (
        ["--direct", direct] if direct else ["--bootstrap", args.bootstrap, "--topic", str(topic)]
    )
    done = subprocess.run(
        [PYTHON, str(BENCH / "live_producer.py"), *where, "--rate", f"{rate:.1f}",
         "--seconds", str(seconds), "--run-id", run_id, "--pad", str(args.pad)],
        stdout=subprocess.PIPE, text=True, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- S: drain the preloaded topic ----------------------------------------------------------------


@dataclass
class Drain:
    """What one S run measured."""

    setting: Setting
    records: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_mib: float = 0.0
    inflight: list[float] = field(default_factory=list)
    commit_rtt: float | None = None
    unique_ids: int = 0
    committed: int = 0
    end: int = 0
    idle_cpu_percent: float | None = None
    largest_poll: int = 0
    samples: list[dict[str, float]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Records per second."""
        return self.records / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        """Every id arrived and every offset was committed."""
        return self.unique_ids == self.records and self.committed == self.end

    def duplicate_bound(self, commit_interval: float, commit_every: int) -> float:
        """Records a crash at this rate may deliver again: those in flight, plus those
        delivered in one commit period (the interval, or COMMIT_EVERY records if sooner, plus
        the commit's round trip, since one commit is in flight at a time)."""
        if self.setting.forwarder == "baseline":
            # One poll in flight, committed asynchronously after each ack: a crash repeats
            # the poll in hand and, at worst, the one whose commit had not landed.
            return 2.0 * self.largest_poll
        period = min(commit_interval, commit_every / self.rate) + (self.commit_rtt or 0.0)
        return max(self.inflight, default=0.0) + self.rate * period


def drain(
    setting: Setting, sink: Sink, args: argparse.Namespace, topic: str, count: int, work: Path,
    *, idle: bool,
) -> Drain:  # fmt: skip
    """Run S for ``setting``: first fetch to last commit of ``count`` preloaded records. The
    sink is fresh: its unique ids (kept across resets) are this run's."""
    sink.reset()
    result = Drain(setting, records=count)
    fwd = Forwarder(setting, args, topic, sink.target, work / f"s-{setting.key}.log")
    began = time.time()
    first_fetch: float | None = None
    # CPU is read on every sample, and S's CPU counts from the last reading before the first
    # fetch: the start-up (imports, joining the group) is not part of draining.
    cpu_trace: list[tuple[float, float]] = [(began, cpu_seconds(fwd.pid))]
    finished: float | None = None
    metrics: dict[str, float] = {}
    try:
        while time.time() - began < args.timeout:
            time.sleep(args.sample_interval)
            now = time.time()
            cpu_trace.append((now, cpu_seconds(fwd.pid)))
            if fwd.http_port is not None:
                text = fwd.metrics_text()
                metrics = parse_metrics(text) if text else metrics
                if text:
                    metrics["t"] = now - began
                    result.samples.append(dict(metrics))
                if first_fetch is None and metrics.get(f"{METRIC}records_consumed_total", 0) > 0:
                    first_fetch = (now + cpu_trace[-2][0]) / 2
                if first_fetch is not None:
                    result.inflight.append(metrics.get(f"{METRIC}inflight_records", 0.0))
                done = metrics.get(f"{METRIC}records_forwarded_total", 0) >= count
            else:
                first_fetch = fwd.first_fetch
                done = sink.stats()["records"] >= count
            if first_fetch is not None and (done or args.processes > 1):
                committed, end = committed_and_end(
                    args.bootstrap, fwd.group, topic, args.partitions
                )
                if committed >= end:
                    finished = time.time()
                    before = [cpu for at, cpu in cpu_trace if at <= first_fetch]
                    result.cpu_seconds = cpu_seconds(fwd.pid) - (before or [0.0])[-1]
                    break
        if finished is None or first_fetch is None:
            raise SystemExit(f"{setting.key}: S did not finish within {args.timeout} s")
        result.seconds = finished - first_fetch
        if idle:
            # Nothing left to read: how much CPU does a waiting forwarder burn?
            time.sleep(2)
            idle_from = cpu_seconds(fwd.pid)
            time.sleep(args.idle_seconds)
            result.idle_cpu_percent = (cpu_seconds(fwd.pid) - idle_from) / args.idle_seconds * 100
    finally:
        _, result.peak_rss_mib = fwd.stop()
    commits = metrics.get(f"{METRIC}commit_duration_seconds_count", 0.0)
    if commits:
        result.commit_rtt = metrics[f"{METRIC}commit_duration_seconds_sum"] / commits
    result.largest_poll = int(fwd.summary.get("largest_poll", 0))
    result.unique_ids = int(sink.stats()["unique_ids"])
    result.committed, result.end = committed_and_end(
        args.bootstrap, fwd.group, topic, args.partitions
    )
    return result


# -- L: latency at fixed live rates --------------------------------------------------------------


@dataclass
class Latency:
    """Latency at one rate."""

    fraction: float | None  # of the setting's S; None for a step at a fixed rate
    target_rate: float
    produced: dict[str, Any]
    sink: dict[str, Any]
    cpu_percent: float | None = None
    load: float = field(default_factory=lambda: os.getloadavg()[0])

    @property
    def step(self) -> str:
        """The step's name: its fraction of S, or its fixed rate."""
        if self.fraction is None:
            return f"{self.target_rate:,.0f}/s"
        return f"{self.fraction:.0%}"

    @property
    def complete(self) -> bool:
        """Every produced record reached the sink."""
        return int(self.sink["records"]) >= int(self.produced["records"])


def settle(sink: Sink, expected: int, timeout: float) -> dict[str, Any]:
    """Wait until the sink has ``expected`` records (or the timeout); its stats."""
    stats: dict[str, Any] = {}

    def arrived() -> bool:
        stats.update(sink.stats())
        return int(stats["records"]) >= expected

    wait_for(arrived, timeout)
    return stats


def latencies(
    setting: Setting, sink: Sink, args: argparse.Namespace, s_rate: float, work: Path
) -> tuple[list[Latency], list[Latency], str]:
    """Run L for ``setting`` on a fresh topic: (one result per fraction of S, one per fixed live
    rate (fast sink only), the final /metrics). The fixed rates come first, on a calm broker."""
    topic = f"lat-{setting.key}-{time.time_ns()}"
    create_topic(args.bootstrap, topic, args.partitions)
    sink.reset()
    fwd = Forwarder(setting, args, topic, sink.target, work / f"l-{setting.key}.log")
    results: list[Latency] = []
    fixed: list[Latency] = []
    text = ""
    try:
        if not wait_for(fwd.is_ready, 90):
            raise SystemExit(f"{setting.key}: the sidecar did not become ready")
        # Warm up until records flow end to end: a fresh member needs a moment to find its
        # offsets and start fetching, and that start-up is not the latency being measured.
        warm_rate = max(100.0, s_rate * FRACTIONS[0])
        for attempt in range(10):
            sink.reset()
            sent = run_producer(args, warm_rate, args.warmup_seconds, f"w{attempt}", topic=topic)
            if settle(sink, int(sent["records"]), 10)["records"] >= sent["records"]:
                break
        live_rates = args.live_rates if setting.per_record == "0" else []
        steps = [(None, rate) for rate in live_rates]
        steps += [(fraction, s_rate * fraction) for fraction in args.fractions]
        for fraction, rate in steps:
            sink.reset()
            cpu_before = cpu_seconds(fwd.pid)
            started = time.time()
            run_id = f"f{rate:.0f}" if fraction is None else f"l{fraction}"
            produced = run_producer(args, rate, args.latency_seconds, run_id, topic=topic)
            stats = settle(sink, int(produced["records"]), args.drain_timeout)
            used = cpu_seconds(fwd.pid) - cpu_before
            lat = Latency(fraction, rate, produced, stats, used / (time.time() - started) * 100)
            (fixed if fraction is None else results).append(lat)
            print(f"    {format_latency(setting.label, lat)}", flush=True)
        text = fwd.metrics_text()
    finally:
        fwd.stop()
    return results, fixed, text


WARM_CHUNK_SECONDS = 5.0


def warm_broker(args: argparse.Namespace, work: Path) -> list[float]:
    """Live traffic through a fresh broker before anything is measured, in chunks of 5 s, until
    the producer's acknowledgement p50 is at most ``--warm-ack-ms`` (after two chunks at least)
    or ``--broker-warmup`` seconds have passed. In its first minutes on a busy machine a broker
    acknowledged live produce requests in hundreds of ms, and the first setting measured paid
    for it, whichever it was. Returns each chunk's acknowledgement p50."""
    topic = f"warmup-{time.time_ns()}"
    create_topic(args.bootstrap, topic, args.partitions)
    baseline = SETTINGS["baseline-fast"]
    acks: list[float] = []
    deadline = time.monotonic() + args.broker_warmup
    with open_sink("0", False, work / "sink-warmup.log") as sink:
        # Polls that wait to fill keep the forwarder's CPU for the broker it is warming.
        fwd = Forwarder(
            baseline, args, topic, sink.target, work / "warmup.log", baseline_args=["--fill", "0.1"]
        )
        try:
            while time.monotonic() < deadline:
                sink.reset()
                produced = run_producer(
                    args, args.warmup_rate, WARM_CHUNK_SECONDS, f"bw{len(acks)}", topic=topic
                )
                settle(sink, int(produced["records"]), 30)
                acks.append(float(produced["ack_p50_ms"]))
                if len(acks) >= 2 and acks[-1] <= args.warm_ack_ms:
                    break
        finally:
            fwd.stop()
    return acks


def direct_floor(
    args: argparse.Namespace, rates: list[tuple[float, float]], work: Path
) -> list[Latency]:
    """The producer calling a fast sink itself: what the generator and the sink add alone."""
    out = []
    with open_sink("0", False, work / "sink-direct.log") as sink:
        for fraction, rate in rates:
            sink.reset()
            produced = run_producer(args, rate, args.latency_seconds, f"d{fraction}",
                                    direct=sink.target)  # fmt: skip
            out.append(Latency(fraction, rate, produced, settle(sink, produced["records"], 30)))
            print(f"    {format_latency('direct', out[-1])}", flush=True)
    return out


# -- reporting -----------------------------------------------------------------------------------


def ms(value: float | None) -> str:
    """Milliseconds for a table: one decimal below 100, none above; '-' when absent."""
    if value is None:
        return "-"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def format_latency(label: str, lat: Latency) -> str:
    """One line: rate, p50/p99, completeness."""
    got = lat.sink["latency_ms"]
    return (
        f"{label}: {lat.step} ({lat.produced['rate']:,}/s): "
        f"p50 {ms(got.get('p50'))} ms, p99 {ms(got.get('p99'))} ms, "
        f"{lat.sink['records']:,}/{lat.produced['records']:,} arrived, "
        f"producer ack p50 / p99 {ms(lat.produced['ack_p50_ms'])} / "
        f"{ms(lat.produced['ack_p99_ms'])} ms"
    )


def latency_cell(lat: Latency, *, p99: bool = False) -> str:
    """One step as a table cell: p50 / p99, then the rate reached and the producer's
    acknowledgement p50 (and p99); an asterisk when not every record arrived."""
    got = lat.sink["latency_ms"]
    star = "" if lat.complete else "*"
    ack = ms(lat.produced["ack_p50_ms"]) if lat.produced["ack_p50_ms"] else ""
    if ack and p99:
        ack += f" / {ms(lat.produced['ack_p99_ms'])}"
    acked = f"; ack {ack}" if ack else ""
    return f"{ms(got.get('p50'))} / {ms(got.get('p99'))}{star} ({lat.produced['rate']:,}/s{acked})"


def stage_table(text: str) -> list[str]:
    """Per-stage p50/p99 from the sidecar's /metrics, or a line saying they are absent."""
    from tests.support import harness

    quantiles = getattr(harness, "stage_quantiles", None)
    p50 = quantiles(text, 0.5) if quantiles and text else {}
    p99 = quantiles(text, 0.99) if quantiles and text else {}
    if not p50:
        return [
            "Per-stage latency: not available (no `tagging_sidecar_stage_seconds` in /metrics)."
        ]
    lines = ["| stage | p50 ms | p99 ms |", "|---|---:|---:|"]
    for stage, value in p50.items():
        lines.append(f"| {stage} | {value * 1000:.2f} | {p99.get(stage, 0.0) * 1000:.2f} |")
    return lines


def plot_latency(
    table: dict[str, list[Latency]], floor: list[Latency], path: Path, title: str
) -> None:
    """p50 (solid) and p99 (dashed) against the rate produced, every step of every setting
    (fixed rates and fractions of S alike), one panel per sink: settings compare at equal
    rates, not at equal fractions of their different S."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    panels = {"0": axes[0], "50us": axes[1]}
    axes[0].set_title("fast sink")
    axes[1].set_title("sink spending 50 µs per record")
    for key, results in [*table.items(), ("direct (no Kafka)", floor)]:
        setting = SETTINGS.get(key)
        axis = panels.get(setting.per_record if setting else "0", axes[0])
        measured = sorted(
            (r for r in results if r.sink["latency_ms"].get("count")),
            key=lambda r: float(r.produced["rate"]),
        )
        if not measured:
            continue
        xs = [float(r.produced["rate"]) for r in measured]
        ms = [r.sink["latency_ms"] for r in measured]
        (line,) = axis.plot(xs, [m["p50"] for m in ms], marker="o", label=key)
        axis.plot(xs, [m["p99"] for m in ms], linestyle="--", color=line.get_color())
    for axis in axes:
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("records/s produced")
        axis.grid(True, which="both", alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    axes[0].set_ylabel("event time to sink receive, ms (p50 solid, p99 dashed)")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def plot_drain(samples: list[dict[str, float]], path: Path, title: str) -> None:
    """Throughput, records in flight and active workers over one S run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(samples) < 2:
        return
    times = [s["t"] for s in samples]
    forwarded = [s.get(f"{METRIC}records_forwarded_total", 0) for s in samples]
    rates = [0.0] + [
        (forwarded[i] - forwarded[i - 1]) / max(1e-9, times[i] - times[i - 1])
        for i in range(1, len(samples))
    ]
    figure, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    axes[0].plot(times, rates)
    axes[0].set_ylabel("records/s")
    axes[1].plot(times, [s.get(f"{METRIC}pool_backlog_records", 0) for s in samples])
    axes[1].plot(times, [s.get(f"{METRIC}inflight_records", 0) for s in samples])
    axes[1].legend(["pool backlog", "in flight"])
    axes[1].set_ylabel("records")
    axes[2].plot(times, [s.get(f"{METRIC}workers_active", 0) for s in samples])
    axes[2].set_ylabel("active workers")
    axes[2].set_xlabel("seconds since start")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def commit_cadence(args: argparse.Namespace) -> tuple[float, int]:
    """COMMIT_INTERVAL and COMMIT_EVERY as the sidecar runs them (defaults unless --env)."""
    from tagging_sidecar.config import KafkaSettings

    overrides = dict(item.split("=", 1) for item in args.env)
    fields = KafkaSettings.model_fields
    interval = overrides.get("TAGGING_KAFKA__COMMIT_INTERVAL", fields["commit_interval"].default)
    every = overrides.get("TAGGING_KAFKA__COMMIT_EVERY", fields["commit_every"].default)
    return float(interval), int(every)


def report(
    args: argparse.Namespace,
    r0: tuple[float, float],
    drains: dict[str, Drain],
    lats: dict[str, list[Latency]],
    fixed: dict[str, list[Latency]],
    floor: list[Latency],
    stages: dict[str, str],
) -> str:
    """The whole report as markdown."""
    interval, every = commit_cadence(args)
    r0_rate, r0_cpu = r0
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
        f"Python {platform.python_version()}; broker, sink, producer and forwarder share it. "
        f"Records of ~{args.record_bytes:.0f} bytes in {args.partitions} partitions; S drains "
        f"{args.count:,} records (batch) / {args.single_count:,} (single); each latency step "
        f"produces for {args.latency_seconds:g} s. Sidecar on its defaults"
        + (f" plus {' '.join(args.env)}" if args.env else "")
        + f". Sink: {args.sink_name}. Broker warm-up: producer acknowledgement p50 per 5 s "
        f"{', '.join(ms(a) for a in args.warmup_acks) or 'not run'} ms. Load average (1 min) "
        "at the start "
        f"{args.load_start:.1f}, at the end {os.getloadavg()[0]:.1f}.",
        "",
        "### Throughput and cost",
        "",
        "| setting | S records/s | S/R0 | CPU-seconds (% of a core) | peak RSS MiB "
        "| in flight max / mean | crash-duplicate bound | check |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
        f"| R0: raw consume(10000), no work | {r0_rate:,.0f} | | {r0_cpu:.1f} | | | | |",
    ]
    for key, d in drains.items():
        if d.setting.forwarder == "sidecar":
            inflight = f"{max(d.inflight, default=0):,.0f} / " + (
                f"{sum(d.inflight) / len(d.inflight):,.0f}" if d.inflight else "-"
            )
        else:
            inflight = f"{d.largest_poll:,} (one poll)"
        check = "all ids, all committed" if d.ok else (
            f"**{d.unique_ids:,} ids, committed {d.committed:,} of {d.end:,}**"
        )  # fmt: skip
        lines.append(
            f"| {d.setting.label} | {d.rate:,.0f} | {d.rate / r0_rate:.2f} | "
            f"{d.cpu_seconds:.1f} ({d.cpu_seconds / d.seconds * 100:.0f} %) | "
            f"{d.peak_rss_mib:.0f} | {inflight} | {d.duplicate_bound(interval, every):,.0f} | "
            f"{check} |"
        )
        del key
    idle = [d for d in drains.values() if d.idle_cpu_percent is not None]
    lines.append("")
    for d in idle:
        lines.append(
            f"Idle CPU ({d.setting.label}, {args.idle_seconds:g} s with nothing to consume): "
            f"{d.idle_cpu_percent:.2f} % of a core."
        )
    lines.append(
        f"Crash-duplicate bound: records in flight (max) + records delivered in one commit "
        f"period at S's rate (min({interval:g} s, {every} records) + the mean commit round "
        "trip); for the baseline, two polls."
    )
    lines += [
        "",
        "### Latency: event time to sink receive",
        "",
        "Each cell is p50 / p99 in ms at that fraction of the setting's own S, then the rate "
        "reached and the producer's own Kafka acknowledgement p50 (time before the broker held "
        "the record, part of the latency); an asterisk marks a step whose records did not all "
        "arrive within "
        f"{args.drain_timeout:g} s of the end of production.",
        "",
        "| setting | " + " | ".join(f"{f:.0%} of S" for f in args.fractions) + " |",
        "|---|" + "---:|" * len(args.fractions),
    ]
    rows = [*[(SETTINGS[k].label, v) for k, v in lats.items()]]
    if floor:
        rows.append(("direct: producer → sink, no Kafka (at the first setting's rates)", floor))
    lines += [
        f"| {label} | " + " | ".join(map(latency_cell, results)) + " |" for label, results in rows
    ]
    if any(fixed.values()):
        rates = next(v for v in fixed.values() if v)
        lines += [
            "",
            "### Latency at fixed live rates, fast sink",
            "",
            "The same for every forwarder, measured before its fractions of S. Each cell is p50 / "
            "p99 in ms, then the rate reached and the producer's acknowledgement p50 / p99: a "
            "step's p99 cannot beat the time the broker took to hold its records.",
            "",
            "| setting | " + " | ".join(f"{r.target_rate:,.0f}/s" for r in rates) + " |",
            "|---|" + "---:|" * len(rates),
        ]
        lines += [
            f"| {SETTINGS[k].label} | " + " | ".join(latency_cell(r, p99=True) for r in v) + " |"
            for k, v in fixed.items()
            if v
        ]
    lines += ["", "Producer during the latency steps (Kafka acknowledgement, sampled):", ""]
    lines += [
        "| setting | load | produced/s | schedule lag max ms | queue full | ack p50 / p99 ms "
        "| forwarder CPU % | machine load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, results in lats.items():
        for lat in [*fixed.get(key, []), *results]:
            p = lat.produced
            lines.append(
                f"| {key} | {lat.step} | {p['rate']:,} | {ms(p['schedule_lag_max_ms'])} | "
                f"{p['queue_full']} | {ms(p['ack_p50_ms'])} / {ms(p['ack_p99_ms'])} | "
                f"{lat.cpu_percent or 0:.0f} | {lat.load:.1f} |"
            )
    for key, text in stages.items():
        lines += ["", f"### Per-stage latency, {SETTINGS[key].label} (after its latency phase)"]
        lines += ["", *stage_table(text)]
    return "\n".join(lines)


# -- orchestration -------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--count", type=int, default=1_000_000, help="records S drains in batch mode"
    )
    parser.add_argument(
        "--single-count", type=int, default=1_000_000, help="records S drains in single mode"
    )
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"comma-separated, from {', '.join(SETTINGS)}")  # fmt: skip
    parser.add_argument("--latency-seconds", type=float, default=10.0, help="per latency step")
    parser.add_argument("--fractions", default=",".join(str(f) for f in FRACTIONS),
                        help="latency steps, as fractions of S")  # fmt: skip
    parser.add_argument(
        "--live-rates",
        default=",".join(f"{r:g}" for r in LIVE_RATES),
        help="latency steps at fixed records/s, fast sink only ('' for none)",
    )
    parser.add_argument(
        "--warmup-seconds", type=float, default=5.0, help="live traffic before the latency steps"
    )
    parser.add_argument(
        "--broker-warmup",
        type=float,
        default=60.0,
        help="at most this many seconds of live traffic before measuring (0: none)",
    )
    parser.add_argument(
        "--warm-ack-ms",
        type=float,
        default=10.0,
        help="the warm-up ends once the producer's acknowledgement p50 is this low",
    )
    parser.add_argument("--warmup-rate", type=float, default=10_000.0, help=argparse.SUPPRESS)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-direct", action="store_true")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds a latency step may take to arrive once production ends",
    )
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--pad", type=int, default=90, help="label padding: ~200-byte records")
    parser.add_argument("--processes", type=int, default=1, help="TAGGING_PROCESSES")
    parser.add_argument("--env", action="append", default=[],
                        help="extra TAGGING_...=VALUE for every sidecar")  # fmt: skip
    parser.add_argument("--sample-interval", type=float, default=0.2,
                        help="seconds between /metrics samples during S")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=600.0, help="longest S run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", default="bench", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.fractions = [float(f) for f in args.fractions.split(",")]
    args.live_rates = [float(r) for r in args.live_rates.split(",") if r]
    args.settings = [SETTINGS[k] for k in args.settings.split(",")]
    return args


def main() -> int:
    """Run every phase and print the report."""
    args = parse_args()
    if args.child:
        print(json.dumps(PHASES[args.child](args)))
        return 0
    work = RESULTS / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    args.sink_name = sink_name()
    args.load_start = os.getloadavg()[0]
    args.warmup_acks = []
    wall = time.monotonic()
    print(f"==> broker (results in {work})", flush=True)
    broker = LocalKafka(work / "kafka")
    try:
        args.bootstrap = broker.start()
        topics = {"batch": (f"{args.topic}-batch", args.count),
                  "single": (f"{args.topic}-single", args.single_count)}  # fmt: skip
        modes = {s.mode for s in args.settings}
        for mode, (topic, count) in topics.items():
            if mode not in modes and mode != "batch":
                continue
            print(f"==> preloading {count:,} records into {topic}", flush=True)
            create_topic(args.bootstrap, topic, args.partitions)
            common = ["--bootstrap", args.bootstrap, "--topic", topic, "--count", str(count),
                      "--pad", str(args.pad), "--partitions", str(args.partitions)]  # fmt: skip
            out, _ = run_child_phase("preload", common)
            args.record_bytes = out["payload_bytes"] / count
            if mode == "batch":
                print("==> R0: raw consume(num_messages=10000), no work", flush=True)
                r0_out, r0_cpu = run_child_phase("r0", common)
                r0 = (r0_out["records"] / r0_out["seconds"], r0_cpu)
                print(f"    {r0[0]:,.0f} records/s", flush=True)
        if args.broker_warmup > 0:
            print(
                f"==> warming the broker up: {args.warmup_rate:,.0f} records/s through the "
                f"baseline forwarder until acknowledgements take <= {args.warm_ack_ms:g} ms "
                f"(at most {args.broker_warmup:g} s; not reported)",
                flush=True,
            )
            acks = warm_broker(args, work)
            args.warmup_acks = acks
            print(f"    producer ack p50 per 5 s: {', '.join(ms(a) for a in acks)} ms", flush=True)
        drains: dict[str, Drain] = {}
        lats: dict[str, list[Latency]] = {}
        fixed: dict[str, list[Latency]] = {}
        stages: dict[str, str] = {}
        for setting in args.settings:
            topic, count = topics[setting.mode]
            single_only = setting.mode == "single"
            with open_sink(
                setting.per_record, single_only, work / f"sink-{setting.key}.log"
            ) as sink:
                setting_began = time.monotonic()
                print(f"==> S: {setting.label}, {count:,} records", flush=True)
                idle = setting.forwarder == "sidecar" and not any(
                    d.idle_cpu_percent is not None for d in drains.values()
                )
                d = drain(setting, sink, args, topic, count, work, idle=idle)
                drains[setting.key] = d
                print(
                    f"    {d.rate:,.0f} records/s, {d.cpu_seconds:.1f} CPU-s, peak RSS "
                    f"{d.peak_rss_mib:.0f} MiB, {'ok' if d.ok else 'CHECK FAILED'}",
                    flush=True,
                )
                if d.samples and not (work / "drain.png").exists():
                    plot_drain(
                        d.samples, work / "drain.png", f"{setting.label}: S, {count:,} records"
                    )
                if not args.skip_latency:
                    print(f"==> L: {setting.label}", flush=True)
                    lats[setting.key], fixed[setting.key], text = latencies(
                        setting, sink, args, d.rate, work
                    )
                    if setting.forwarder == "sidecar":
                        stages[setting.key] = text
                print(
                    f"    ({setting.key} took {time.monotonic() - setting_began:.0f} s; "
                    f"{(time.monotonic() - wall) / 60:.1f} min so far)",
                    flush=True,
                )
        floor: list[Latency] = []
        if not args.skip_latency and not args.skip_direct and drains:
            first = next(iter(drains.values()))
            print("==> direct: producer → sink, no Kafka, no forwarder", flush=True)
            floor = direct_floor(args, [(f, first.rate * f) for f in args.fractions], work)
        if lats:
            steps = {key: [*fixed.get(key, []), *results] for key, results in lats.items()}
            plot_latency(steps, floor, work / "latency.png", "tagging-sidecar latency")
        text = report(args, r0, drains, lats, fixed, floor, stages)
        text += f"\n\nWhole run: {(time.monotonic() - wall) / 60:.1f} minutes.\n"
        (work / "report.md").write_text(text)
        print("\n" + text)
        print(f"plots: {work / 'latency.png'}, {work / 'drain.png'}")
        return 0 if all(d.ok for d in drains.values()) else 1
    finally:
        broker.stop()
        shutil.rmtree(work / "kafka" / "data", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
