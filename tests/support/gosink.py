"""The Go sink (``bench/gosink``) as a context manager: a fast Havilah server for tests and benches.

The binary is built once per machine into a cache directory named after a hash of its sources, so
a change to them builds a new one and an unchanged tree reuses the last build. Tests that use it
call :func:`require_go` first: without the ``go`` executable they are skipped, never failed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import urllib.request
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

SOURCE = Path(__file__).resolve().parents[2] / "bench" / "gosink"


def go_executable() -> str | None:
    """The ``go`` command, or None where the Go toolchain is not installed."""
    return shutil.which("go")


def require_go() -> None:
    """Skip the calling test when the Go toolchain is missing."""
    import pytest

    if go_executable() is None:
        pytest.skip("the Go sink needs the `go` executable, which is not installed here")


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tagging-sidecar" / "gosink"


def _source_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(SOURCE.iterdir()):
        if path.name in ("go.mod", "go.sum") or (
            path.suffix == ".go" and not path.name.endswith("_test.go")
        ):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def build(timeout: float = 300.0) -> Path:
    """The path of the built binary, building it first unless the sources are unchanged."""
    go = go_executable()
    if go is None:
        raise RuntimeError("the `go` executable is not installed")
    directory = _cache_root() / _source_digest()
    binary = directory / "gosink"
    if binary.exists():
        return binary
    directory.mkdir(parents=True, exist_ok=True)
    # One build at a time per machine: parallel test processes wait for the first one.
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists():
            return binary
        partial = directory / f"gosink.{os.getpid()}.tmp"
        result = subprocess.run(
            [go, "build", "-o", str(partial), "."],
            cwd=SOURCE,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"go build of the Go sink failed:\n{result.stderr[-4000:]}")
        partial.replace(binary)
    return binary


def _duration(value: float | timedelta) -> str:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    return f"{round(seconds * 1e9)}ns"


class GoSink:
    """Runs the Go sink on free loopback ports inside a ``with`` block.

    ``per_record`` (seconds or a timedelta) is the time each record costs the server, spent once
    per call after the stream ended; ``single_only`` makes StreamMetricBatch answer
    UNIMPLEMENTED; ``ids_file`` receives every id, one per line, before each call is answered.
    """

    def __init__(
        self,
        per_record: float | timedelta = 0.0,
        single_only: bool = False,
        ids_file: Path | None = None,
        ready_timeout: float = 30.0,
    ) -> None:
        self.per_record = per_record
        self.single_only = single_only
        self.ids_file = ids_file
        self.ready_timeout = ready_timeout
        self.target = ""
        self.stats_address = ""
        self._process: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None

    def command(self, binary: Path) -> list[str]:
        """The command line that starts the sink."""
        argv = [str(binary), "-listen", "127.0.0.1:0", "-stats", "127.0.0.1:0"]
        if self.per_record:
            argv += ["-per-record", _duration(self.per_record)]
        if self.single_only:
            argv.append("-single-only")
        if self.ids_file is not None:
            argv += ["-ids", str(self.ids_file)]
        return argv

    def start(self) -> Self:
        """Build if needed, start, and wait for the ready line."""
        binary = build()
        self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            self.command(binary),
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        line = self._ready_line()
        words = line.split()
        if len(words) != 4 or words[0] != "LISTEN" or words[2] != "STATS":
            self.stop()
            raise RuntimeError(f"the Go sink printed an unexpected ready line: {line!r}")
        self.target, self.stats_address = words[1], words[3]
        return self

    def _ready_line(self) -> str:
        assert self._process is not None and self._process.stdout is not None
        # readline blocks; a timer kills a sink that never gets ready so the read returns.
        timer = threading.Timer(self.ready_timeout, self._process.kill)
        timer.start()
        try:
            line = self._process.stdout.readline()
        finally:
            timer.cancel()
        if not line:
            errors = self._errors()
            self.stop()
            raise RuntimeError(f"the Go sink did not start: {errors}")
        return line.strip()

    def _errors(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()[-2000:]

    def _http(self, method: str, path: str) -> dict[str, Any]:
        request = urllib.request.Request(f"http://{self.stats_address}{path}", method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            body: dict[str, Any] = json.loads(response.read())
        return body

    def stats(self) -> dict[str, Any]:
        """The sink's ``/stats``: calls, records, unique_ids and a latency summary in ms."""
        return self._http("GET", "/stats")

    def reset(self) -> None:
        """Clear the counters and latency samples (the set of ids seen stays)."""
        self._http("POST", "/reset")

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 5 s)."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
            if process.stdout is not None:
                process.stdout.close()
        if self._stderr is not None:
            with contextlib.suppress(OSError):
                self._stderr.close()
            self._stderr = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
