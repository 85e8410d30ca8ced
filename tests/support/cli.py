"""Run the ``tagging-sidecar`` command in a child process with exactly the given environment."""

from __future__ import annotations

import subprocess
import sys


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``tagging-sidecar ARGS`` with only PATH and ``env`` set; never raises on failure."""
    return subprocess.run(
        [sys.executable, "-m", "tagging_sidecar.cli", *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
