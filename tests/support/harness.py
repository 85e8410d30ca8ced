"""The one harness for tests, ``scripts/demo.py`` and ``bench/``: run the sidecar as a real
process, create topics, read a group's offsets, scrape ``/metrics``, and start a whole local stack
(broker + reference sink + sidecar) in one ``with`` block.

``scripts/`` and ``bench/`` put the repository root on ``sys.path`` to import it.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, ClassVar

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

# The documented public path is confluent_kafka.admin.NewTopic, but that module
# does not re-export it explicitly, so mypy --strict rejects it; cimpl defines it.
from confluent_kafka.cimpl import NewTopic
from prometheus_client.parser import text_string_to_metric_families

from .kafka_broker import LocalKafka

PYTHON = sys.executable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for processes that need a fixed one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sidecar_env(
    bootstrap: str,
    topic: str,
    group: str,
    target: str,
    *,
    commit_interval: str | None = "0.2",
    **extra: str,
) -> dict[str, str]:
    """Environment for ``tagging-sidecar run``: the current one minus TAGGING_*, plus these.

    ``extra`` keys are setting names without the prefix, e.g. ``POOL__MAX_WORKERS="4"``. Tests
    commit every 0.2 s so they see progress quickly; ``commit_interval=None`` keeps the default.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGGING_")}
    env.update(
        {
            "TAGGING_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "TAGGING_KAFKA__TOPICS": topic,
            "TAGGING_KAFKA__GROUP_ID": group,
            "TAGGING_GRPC__TARGET": target,
            "TAGGING_HTTP__PORT": "0",
            "TAGGING_LOG__FORMAT": "json",
        }
    )
    if commit_interval is not None:
        env["TAGGING_KAFKA__COMMIT_INTERVAL"] = commit_interval
    env.update({f"TAGGING_{k.upper()}": v for k, v in extra.items()})
    return env


def create_topic(
    bootstrap: str,
    name: str,
    partitions: int,
    replication_factor: int = 1,
    timeout: float = 30.0,
    config: Mapping[str, str] | None = None,
) -> None:
    """Create topic ``name`` (with topic ``config``) and wait until every partition has a leader.

    Raises :class:`confluent_kafka.KafkaException` if creation fails (including
    when the topic already exists) and :class:`TimeoutError` if the partitions
    do not all get a leader within ``timeout`` seconds.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [
            NewTopic(
                name,
                num_partitions=partitions,
                replication_factor=replication_factor,
                config=dict(config or {}),
            )
        ],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    futures[name].result(timeout=timeout)

    # CreateTopics returns once the controller committed the topic; wait until
    # the broker's metadata shows it with a leader for every partition.
    deadline = time.monotonic() + timeout
    while True:
        try:
            md = admin.list_topics(topic=name, timeout=max(1.0, deadline - time.monotonic()))
            topic = md.topics.get(name)
            if (
                topic is not None
                and topic.error is None
                and len(topic.partitions) == partitions
                and all(p.leader >= 0 for p in topic.partitions.values())
            ):
                return
        except KafkaException:
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"topic {name!r} not ready on {bootstrap} after {timeout}s")
        time.sleep(0.1)


# -- offsets ------------------------------------------------------------------------------------


def offsets(bootstrap: str, group: str, topic: str, partitions: int) -> tuple[list[int], list[int]]:
    """(committed offsets of ``group``, log-end offsets) of every partition of ``topic``.

    A partition the group never committed shows a negative offset.
    """
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        committed = [tp.offset for tp in consumer.committed(tps, timeout=30)]
        ends = [consumer.get_watermark_offsets(tp, timeout=30)[1] for tp in tps]
        return committed, ends
    finally:
        consumer.close()


def committed_and_end(bootstrap: str, group: str, topic: str, partitions: int) -> tuple[int, int]:
    """(records committed by ``group``, records in ``topic``) summed over the partitions."""
    committed, ends = offsets(bootstrap, group, topic, partitions)
    return sum(max(0, c) for c in committed), sum(ends)


def all_committed(bootstrap: str, group: str, topic: str, partitions: int) -> Callable[[], bool]:
    """A check for ``eventually``: the group committed every partition up to its log end."""

    def check() -> bool:
        committed, ends = offsets(bootstrap, group, topic, partitions)
        return committed == ends

    return check


# -- what the sink recorded ---------------------------------------------------------------------


def all_received(path: Path, ids: list[str]) -> Callable[[], bool]:
    """A check for ``eventually``: the sink recorded every one of ``ids``."""
    wanted = set(ids)
    return lambda: wanted <= set(read_ids(path))


def read_ids(path: Path) -> list[str]:
    """Ids the sink recorded, in arrival order (duplicates kept)."""
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line]


def python_output(code: str, timeout: float) -> str:
    """Run ``code`` in a fresh interpreter (for process-wide effects: memory, the collector)
    and return what it printed; a failure raises."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=timeout
    )
    return result.stdout


def eventually(
    predicate: Callable[[], bool], timeout: float = 120.0, interval: float = 0.2
) -> None:
    """Wait for something another process will do; fail if it never happens."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s")
        time.sleep(interval)


# -- HTTP: probes and metrics -------------------------------------------------------------------


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""


def parse_metrics(text: str) -> dict[str, float]:
    """Every sample of a Prometheus text exposition, summed over labels, by sample name."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def metric_value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """The sample ``name`` whose labels include ``labels``, summed; None if there is none."""
    wanted = dict(labels or {})
    found: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and wanted.items() <= sample.labels.items():
                found = (found or 0.0) + sample.value
    return found


STAGE_HISTOGRAM = "tagging_sidecar_stage_seconds"


def stage_quantiles(metrics_text: str, q: float) -> dict[str, float]:
    """The ``q``-quantile of each stage of ``tagging_sidecar_stage_seconds``, by ``stage``.

    Estimated from the buckets as PromQL's ``histogram_quantile`` does: find the bucket where
    the rank ``q * count`` falls and interpolate linearly inside it (from 0 for the first
    bucket); a rank in the ``+Inf`` bucket gives the highest finite bound. A stage with no
    observation gives NaN.
    """
    return _quantiles(metrics_text, STAGE_HISTOGRAM, q, "stage")


def histogram_quantile(metrics_text: str, name: str, q: float) -> float:
    """The ``q``-quantile of histogram ``name`` over all its series, estimated as
    :func:`stage_quantiles` does (NaN without observations)."""
    return _quantiles(metrics_text, name, q, None).get("", math.nan)


def _quantiles(metrics_text: str, name: str, q: float, by: str | None) -> dict[str, float]:
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"a quantile is between 0 and 1, not {q}")
    buckets: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name + "_bucket":
                counts = buckets.setdefault(sample.labels[by] if by else "", {})
                bound = float(sample.labels["le"])
                counts[bound] = counts.get(bound, 0.0) + sample.value
    return {key: _bucket_quantile(q, sorted(counts.items())) for key, counts in buckets.items()}


def _bucket_quantile(q: float, cumulative: list[tuple[float, float]]) -> float:
    """``histogram_quantile`` over (upper bound, cumulative count) pairs sorted by bound."""
    if not cumulative or cumulative[-1][1] == 0:
        return math.nan
    rank = q * cumulative[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank and count > below:
            if math.isinf(bound):
                return lower  # the highest finite bound: nothing is known above it
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def scrape(port: int) -> dict[str, float]:
    """``/metrics`` of a sidecar on 127.0.0.1:``port`` (see :func:`parse_metrics`); empty when
    it does not answer."""
    status, text = http_get(f"http://127.0.0.1:{port}/metrics", timeout=2)
    return parse_metrics(text) if status == 200 else {}


def ready(port: int) -> bool:
    """Whether ``/readyz`` of a sidecar on 127.0.0.1:``port`` answers 200."""
    return http_get(f"http://127.0.0.1:{port}/readyz", timeout=2)[0] == 200


# -- processes ----------------------------------------------------------------------------------


class SidecarProcess:
    """``tagging-sidecar run`` in a child process, its log in a file."""

    #: every process started, so a failed test cannot leave one running (see conftest.py)
    started: ClassVar[list[SidecarProcess]] = []

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        SidecarProcess.started.append(self)
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "tagging_sidecar.cli", "run"],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        """The child's process id."""
        return int(self.proc.pid)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: no chance to drain or commit."""
        self.proc.kill()
        self.wait(30)

    def wait(self, timeout: float) -> int:
        """Wait for the exit status."""
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is not None:
                self._log.close()

    def cleanup(self) -> None:
        """Kill the process if it still runs and close its log."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._log.close()

    def log(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace")


class SinkProcess:
    """``tagging-sidecar sink`` as a child process on 127.0.0.1:``port``, ids to a file."""

    def __init__(self, port: int, record_path: Path, log_path: Path, *extra: str) -> None:
        self.port = port
        self.record_path = record_path
        self._log: IO[bytes] = log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                PYTHON, "-m", "tagging_sidecar.cli", "sink",
                "--listen", f"127.0.0.1:{port}",
                "--record", str(record_path),
                "--log-format", "json",
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    @property
    def target(self) -> str:
        """The gRPC target of this sink."""
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGTERM, SIGKILL if it does not go within 30 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._log.close()


class LocalStack:
    """A local broker, the reference sink and optionally a sidecar, all on 127.0.0.1.

    ``with LocalStack(work, topic="t", partitions=6) as stack:`` starts the broker in
    ``work/kafka``, the sink (ids to ``work/received.txt``), creates the topic, and -- with
    ``sidecar=True`` -- one sidecar with its health/metrics port at ``stack.http_port``
    (``sidecar_extra`` adds settings). Leaving the block stops everything it started, in reverse
    order, also after a failure.
    """

    def __init__(
        self,
        work: Path,
        *,
        topic: str,
        partitions: int,
        group: str = "stack",
        sidecar: bool = True,
        sidecar_extra: Mapping[str, str] | None = None,
        sink_args: tuple[str, ...] = (),
    ) -> None:
        self.work = work
        self.topic = topic
        self.partitions = partitions
        self.group = group
        self.broker = LocalKafka(work / "kafka")
        self.received = work / "received.txt"
        self.http_port = free_port()
        self._want_sidecar = sidecar
        self._sidecar_extra = dict(sidecar_extra or {})
        self._sink_args = sink_args
        self._bootstrap: str | None = None
        self.sink: SinkProcess | None = None
        self.sidecar: SidecarProcess | None = None

    @property
    def bootstrap(self) -> str:
        """The broker's bootstrap address."""
        if self._bootstrap is None:
            raise RuntimeError("the stack is not running")
        return self._bootstrap

    def start_sidecar(self, log_name: str = "sidecar.log", **extra: str) -> SidecarProcess:
        """Start a sidecar on the stack's topic, group and sink; ``extra`` adds settings."""
        assert self.sink is not None
        env = sidecar_env(
            self.bootstrap,
            self.topic,
            self.group,
            self.sink.target,
            HTTP__PORT=str(self.http_port),
            **{**self._sidecar_extra, **extra},
        )
        return SidecarProcess(env, self.work / log_name)

    def __enter__(self) -> LocalStack:
        """Start the broker, the sink, the topic and (if asked) the sidecar."""
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            self._bootstrap = self.broker.start()
            self.sink = SinkProcess(
                free_port(), self.received, self.work / "sink.log", *self._sink_args
            )
            create_topic(self.bootstrap, self.topic, self.partitions)
            if self._want_sidecar:
                self.sidecar = self.start_sidecar()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop what was started: sidecar (SIGTERM), sink, broker."""
        if self.sidecar is not None and self.sidecar.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.sidecar.terminate(60)
            self.sidecar.cleanup()
        if self.sink is not None:
            self.sink.stop()
        self.broker.stop()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop everything."""
        self.close()
