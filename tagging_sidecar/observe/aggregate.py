"""One endpoint for several sidecar processes: readiness and metrics of all of them.

With ``TAGGING_PROCESSES > 1`` every child process serves its own probes and metrics on a
loopback port that only the parent reads. The parent answers ``/readyz`` by asking every child
(ready only when all are) and ``/metrics`` by scraping every child and merging the samples.

Why not prometheus_client's multiprocess mode: it cannot remove a labelled series, and the
per-partition series must disappear when a partition is revoked; nor does it export process
metrics. Merging scrapes keeps one ``Metrics`` class for one process and for many.

Merging adds samples up, except where a sum means nothing: per-partition gauges and
``watermark_stalled_seconds`` take the largest value, start and creation times the earliest.
A child that is restarted would make every counter drop; its last scrape is kept and added to
the totals (:meth:`ChildrenMetrics.retire`), so counters stay monotonic.
"""

from __future__ import annotations

import http.client
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

#: seconds the parent waits for one child's answer
SCRAPE_TIMEOUT = 2.0

_Key = tuple[str, tuple[tuple[str, str], ...]]
_COUNTING = ("counter", "histogram", "summary")
_TAKE_MAX = ("tagging_sidecar_watermark_stalled_seconds",)
_TAKE_MIN = ("tagging_sidecar_process_start_time_seconds", "tagging_sidecar_process_max_fds")


@dataclass(frozen=True)
class Child:
    """One child process as the parent sees it: its name and loopback port (None while it is
    not serving, e.g. starting or restarting)."""

    name: str
    port: int | None


def fetch(port: int, path: str) -> tuple[int, str]:
    """GET ``http://127.0.0.1:port/path``: (status, body). Raises OSError when unreachable."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except http.client.HTTPException as exc:
        # A child killed in the middle of an answer: as good as no answer.
        raise ConnectionError(f"{url}: {exc!r}") from None


class ChildrenProbes:
    """``live()``/``ready()`` of the parent, for :class:`~.health.HealthServer`."""

    def __init__(
        self, children: Callable[[], Sequence[Child]], live: Callable[[], tuple[bool, str]]
    ) -> None:
        self._children = children
        self._live = live

    def live(self) -> tuple[bool, str]:
        """Whether the parent's supervision loop runs (it restarts children that stop polling)."""
        return self._live()

    def ready(self) -> tuple[bool, str]:
        """Ready when every child is; otherwise one line per unready child with its reason."""
        return self._every_child("/readyz")

    def started(self) -> tuple[bool, str]:
        """Started when every child has started."""
        return self._every_child("/startupz")

    def _every_child(self, path: str) -> tuple[bool, str]:
        reasons = []
        for child in self._children():
            if child.port is None:
                reasons.append(f"{child.name}: not serving yet")
                continue
            try:
                status, body = fetch(child.port, path)
            except OSError as exc:
                reasons.append(f"{child.name}: no answer ({exc})")
                continue
            if status != 200:
                reasons.append(f"{child.name}: {body.strip()}")
        if reasons:
            return False, "\n".join(reasons)
        return True, "ok"


class _Family:
    def __init__(self, name: str, documentation: str, typ: str) -> None:
        self.name = name
        self.documentation = documentation
        self.type = typ
        self.samples: dict[_Key, float] = {}

    def add(self, sample: Sample) -> None:
        key = (sample.name, tuple(sorted(sample.labels.items())))
        previous = self.samples.get(key)
        if previous is None:
            self.samples[key] = sample.value
        elif self.name.endswith("_created") or self.name in _TAKE_MIN:
            self.samples[key] = min(previous, sample.value)
        elif self.name in _TAKE_MAX or (self.type == "gauge" and "partition" in sample.labels):
            self.samples[key] = max(previous, sample.value)
        else:
            self.samples[key] = previous + sample.value

    def metric(self) -> Metric:
        metric = Metric(self.name, self.documentation, self.type)
        for (name, labels), value in self.samples.items():
            metric.add_sample(name, dict(labels), value)
        return metric


def _merge(families: dict[str, _Family], metrics: Iterable[Metric]) -> None:
    for metric in metrics:
        family = families.get(metric.name)
        if family is None:
            family = families[metric.name] = _Family(metric.name, metric.documentation, metric.type)
        for sample in metric.samples:
            family.add(sample)


class ChildrenMetrics(Collector):
    """A collector that scrapes every child and merges the samples with the parent's own
    (``local``: its process metrics and restart counter)."""

    def __init__(self, children: Callable[[], Sequence[Child]], local: CollectorRegistry) -> None:
        self._children = children
        self._local = local
        self._lock = threading.Lock()
        #: the last scrape of each child, by name
        self._last: dict[str, list[Metric]] = {}
        #: counting samples of children that were restarted
        self._carried: list[Metric] = []

    def _scrape(self, child: Child) -> list[Metric]:
        if child.port is None:
            return []
        try:
            status, body = fetch(child.port, "/metrics")
        except OSError:
            return []
        if status != 200:
            return []
        metrics = list(text_string_to_metric_families(body))
        with self._lock:
            self._last[child.name] = metrics
        return metrics

    def retire(self, child: Child) -> None:
        """``child`` is about to be replaced: scrape it one last time (if it still answers) and
        keep its counters, so that the totals do not go down when its successor starts at 0."""
        self._scrape(child)
        with self._lock:
            last = self._last.pop(child.name, [])
            self._carried.extend(m for m in last if m.type in _COUNTING)

    def collect(self) -> Iterable[Metric]:
        """The merged samples of the parent and every child."""
        families: dict[str, _Family] = {}
        _merge(families, self._local.collect())
        for child in self._children():
            _merge(families, self._scrape(child))
        with self._lock:
            carried = list(self._carried)
        _merge(families, carried)
        return [family.metric() for family in families.values()]
