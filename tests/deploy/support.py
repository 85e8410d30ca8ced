"""Shared helpers for the deployment checks: paths, tools, Helm rendering, YAML."""

from __future__ import annotations

import functools
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "tagging-sidecar"
CI_DIR = CHART_DIR / "ci"
CI_VALUES = sorted(CI_DIR.glob("*-values.yaml"))
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
YAMLLINT_CONFIG = REPO_ROOT / ".yamllint.yaml"
HELM_LOCAL = REPO_ROOT / "scripts" / "helm-local"
DASHBOARD = CHART_DIR / "files" / "dashboards" / "tagging-sidecar.json"

RELEASE = "tsc"
FULLNAME = f"{RELEASE}-tagging-sidecar"
CONTAINER = "tagging-sidecar"

# Kubernetes versions the rendered manifests are validated against: the oldest
# the chart supports with every feature (native sidecars) and the newest the
# installed kubernetes-validate ships schemas for.
K8S_MIN = "1.29.0"

# Prometheus metric names (namespace tagging_sidecar) the dashboard must cover.
METRICS = (
    "tagging_sidecar_records_consumed_total",
    "tagging_sidecar_records_forwarded_total",
    "tagging_sidecar_records_failed_total",
    "tagging_sidecar_records_retried_total",
    "tagging_sidecar_records_dead_lettered_total",
    "tagging_sidecar_batch_size_records",
    "tagging_sidecar_rpc_duration_seconds",
    "tagging_sidecar_workers_active",
    "tagging_sidecar_workers_wanted",
    "tagging_sidecar_pool_backlog_records",
    "tagging_sidecar_pool_scale_events_total",
    "tagging_sidecar_inflight_records",
    "tagging_sidecar_inflight_bytes",
    "tagging_sidecar_commit_duration_seconds",
    "tagging_sidecar_commit_failures_total",
    "tagging_sidecar_committed_offset",
    "tagging_sidecar_consumer_lag_records",
    "tagging_sidecar_partitions_paused",
    "tagging_sidecar_watermark_stalled_seconds",
    "tagging_sidecar_record_age_seconds",
    "tagging_sidecar_stage_seconds",
)
HISTOGRAMS = frozenset(
    {
        "tagging_sidecar_batch_size_records",
        "tagging_sidecar_rpc_duration_seconds",
        "tagging_sidecar_commit_duration_seconds",
        "tagging_sidecar_record_age_seconds",
        "tagging_sidecar_stage_seconds",
    }
)


def yaml_load(text: str) -> Any:
    """Parse one YAML document (YAML 1.2, safe loader)."""
    return YAML(typ="safe", pure=True).load(text)


def yaml_load_all(text: str) -> list[Any]:
    """Parse a multi-document YAML stream, dropping empty documents."""
    return [doc for doc in YAML(typ="safe", pure=True).load_all(text) if doc is not None]


def yaml_dump(data: Any) -> str:
    out = io.StringIO()
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.dump(data, out)
    return out.getvalue()


def tool(name: str) -> str:
    """Path of a console script: the running interpreter's venv first, then PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (expected in {candidate.parent} or on PATH)")
    return found


def optional_tool(name: str) -> str | None:
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(name)


def run(
    args: Sequence[str], *, cwd: Path = REPO_ROOT, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output; never raises on a non-zero exit."""
    return subprocess.run(
        list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


@functools.cache
def helm_binary() -> str:
    """Build (first time only) and return the pinned helm from scripts/helm-local."""
    proc = run([str(HELM_LOCAL), "--ensure-only"], timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"scripts/helm-local --ensure-only failed:\n{proc.stderr[-4000:]}")
    path = proc.stdout.strip().splitlines()[-1]
    assert Path(path).is_file(), path
    return path


def helm(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the pinned helm through scripts/helm-local (exactly what the Makefile calls)."""
    helm_binary()
    return run([str(HELM_LOCAL), *args], timeout=timeout)


@dataclass(frozen=True)
class Rendered:
    """The manifests `helm template` produced for one set of values."""

    label: str
    text: str
    docs: tuple[dict[str, Any], ...]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d.get("kind") == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"{self.label}: expected one {kind}, got {len(found)}"
        return found[0]

    def kinds(self) -> list[str]:
        return sorted(str(d.get("kind")) for d in self.docs)

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def pod_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.deployment["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        matches: list[dict[str, Any]] = [
            c for c in self.pod_spec["containers"] if c["name"] == CONTAINER
        ]
        assert len(matches) == 1, f"{self.label}: container {CONTAINER} missing"
        return matches[0]

    def env(self) -> dict[str, dict[str, Any]]:
        """The sidecar container's env entries by name (duplicates are an error)."""
        entries = self.container.get("env", [])
        names = [e["name"] for e in entries]
        dupes = sorted({n for n in names if names.count(n) > 1})
        assert not dupes, f"{self.label}: duplicate env vars {dupes}"
        return {e["name"]: e for e in entries}

    def env_value(self, name: str) -> str:
        entry = self.env()[name]
        assert "value" in entry, f"{self.label}: {name} has no literal value: {entry}"
        value = entry["value"]
        assert isinstance(value, str), f"{self.label}: {name} must render as a string"
        return value


def helm_template(
    *values: Path, sets: Sequence[str] = (), label: str = "", release: str = RELEASE
) -> Rendered:
    """Render the chart (cached per arguments) as release ``release`` in namespace tagging."""
    return _helm_template(tuple(str(v) for v in values), tuple(sets), label, release)


@functools.cache
def _helm_template(
    values: tuple[str, ...], sets: tuple[str, ...], label: str, release: str
) -> Rendered:
    args = ["template", release, str(CHART_DIR), "--namespace", "tagging"]
    for v in values:
        args += ["-f", v]
    for s in sets:
        args += ["--set", s]
    proc = helm(*args)
    assert proc.returncode == 0, f"helm template {label} failed:\n{proc.stderr}"
    docs = tuple(yaml_load_all(proc.stdout))
    for doc in docs:
        assert isinstance(doc, dict), f"{label}: non-mapping document {doc!r}"
    return Rendered(
        label=label or ",".join(Path(v).name for v in values) or "defaults",
        text=proc.stdout,
        docs=docs,
    )


def values_sets() -> list[Any]:
    """pytest params: chart defaults plus every ci/*-values.yaml."""
    return [pytest.param(None, id="defaults")] + [pytest.param(p, id=p.stem) for p in CI_VALUES]


def render_set(values_file: Path | None, release: str = RELEASE) -> Rendered:
    """Render the chart defaults (None) or one ci values file."""
    if values_file is None:
        return helm_template(label="defaults", release=release)
    return helm_template(values_file, label=values_file.stem, release=release)


def deep_merge(base: Any, override: Any) -> Any:
    """Helm's values coalescing: maps merge recursively, everything else replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = deep_merge(base.get(key), value) if key in base else value
        return merged
    return override


def leaf_paths(node: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of every leaf in a values tree (empty maps and lists are leaves)."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaf_paths(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix
