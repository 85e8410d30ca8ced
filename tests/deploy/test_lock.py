"""The image's dependency locks: they agree with pyproject.toml and pip installs them with
``--require-hashes`` (every file checked, nothing resolved beyond the lock)."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy.support import REPO_ROOT, run

pytestmark = pytest.mark.deploy

RUNTIME_LOCK = REPO_ROOT / "requirements.lock"
BUILD_LOCK = REPO_ROOT / "requirements-build.lock"
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)((?:\s+--hash=\S+)*)$")
HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})$")


def _entries(lock: Path) -> dict[str, tuple[Version, list[str]]]:
    """name -> (pinned version, sha256 hashes) of a pip-compile lock with hashes."""
    logical = re.sub(r"\\\n\s*", " ", lock.read_text())
    entries: dict[str, tuple[Version, list[str]]] = {}
    for raw in logical.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        assert match, f"{lock.name}: not an exact pin with hashes: {line[:80]}"
        name, version, hashes = match.groups()
        found = [h for h in hashes.split() if HASH.match(h)]
        assert len(found) == len(hashes.split()), f"{lock.name}: {name} has a non-sha256 hash"
        entries[canonicalize_name(name)] = (Version(version), found)
    return entries


@pytest.mark.parametrize(
    ("lock", "required"),
    [
        (RUNTIME_LOCK, PYPROJECT["project"]["dependencies"]),
        (BUILD_LOCK, PYPROJECT["build-system"]["requires"]),
    ],
    ids=["runtime", "build"],
)
def test_lock_pins_every_declared_dependency_with_hashes(lock: Path, required: list[str]) -> None:
    entries = _entries(lock)
    for text in required:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in entries, f"{name} ({text}) is missing from {lock.name}"
        version, hashes = entries[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock.name} pins {name}=={version}, outside {requirement.specifier}"
        )
        assert hashes, f"{name} has no hash in {lock.name}"


def test_runtime_lock_holds_no_development_tools() -> None:
    dev = {
        canonicalize_name(Requirement(t).name)
        for t in PYPROJECT["project"]["optional-dependencies"]["dev"]
    }
    runtime = {canonicalize_name(Requirement(t).name) for t in PYPROJECT["project"]["dependencies"]}
    leaked = sorted((dev - runtime) & set(_entries(RUNTIME_LOCK)))
    assert not leaked, f"development packages in the image lock: {leaked}"


def _require_hashes_dry_run(lock: Path) -> tuple[int, str]:
    proc = run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--require-hashes",
            "--quiet",
            "-r",
            str(lock),
        ],
        timeout=600,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, BUILD_LOCK], ids=["runtime", "build"])
def test_lock_installs_with_require_hashes(lock: Path) -> None:
    """pip resolves the full tree from the lock alone: a dependency the lock lacks, or a file
    whose hash differs, fails here as it would in the image build."""
    code, output = _require_hashes_dry_run(lock)
    assert code == 0, output[-3000:]


def test_require_hashes_catches_an_incomplete_lock(tmp_path: Path) -> None:
    """The check above is meaningful: drop one transitive dependency and pip refuses."""
    text = RUNTIME_LOCK.read_text()
    trimmed = re.sub(r"(?ms)^typing-extensions==.*?(?=^\S)", "", text)
    assert trimmed != text
    lock = tmp_path / "requirements.lock"
    lock.write_text(trimmed)
    code, output = _require_hashes_dry_run(lock)
    assert code != 0
    assert "typing" in output.lower()
