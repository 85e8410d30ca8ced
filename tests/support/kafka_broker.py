"""A real single-node Apache Kafka broker for tests, driven by ``scripts/kafka-local``.

The broker (KRaft, combined broker+controller, 127.0.0.1 only) keeps its
config, data and logs in one directory, so it can be stopped -- gracefully or
with SIGKILL -- and restarted on the same address with its topics and committed
offsets intact. That is what fault-injection tests need.

Example::

    kafka = LocalKafka(tmp_path / "kafka")
    bootstrap = kafka.start()
    try:
        create_topic(bootstrap, "records", partitions=3)  # from tests/support/harness.py
        ...
        kafka.restart(kill=True)
    finally:
        kafka.stop()

``LocalKafka(dir, sasl=True)`` adds a SASL_PLAINTEXT listener (PLAIN and SCRAM-SHA-512, one
test user): :attr:`LocalKafka.sasl_bootstrap`, :attr:`LocalKafka.sasl_username` and
:attr:`LocalKafka.sasl_password` describe it, while :attr:`LocalKafka.bootstrap` stays the
unauthenticated listener (handy for producing test records and reading offsets).
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from types import TracebackType

__all__ = ["KAFKA_LOCAL", "REPO_ROOT", "KafkaLocalError", "LocalKafka"]

REPO_ROOT: Path = Path(__file__).resolve().parents[2]
"""Root of the repository (``tests/support/`` is two levels below it)."""

KAFKA_LOCAL: Path = REPO_ROOT / "scripts" / "kafka-local"
"""The shell script that fetches, starts and stops the broker."""

# First start may download the broker jars (~45 MB) with Maven.
_START_TIMEOUT_S = 600.0
_STOP_TIMEOUT_S = 90.0


class KafkaLocalError(RuntimeError):
    """``scripts/kafka-local`` failed; the message carries its stderr (and the broker log tail)."""


class LocalKafka:
    """One local Kafka broker whose config, data and logs live in ``dir``.

    ``dir`` is created if missing. The first :meth:`start` formats it; later
    starts reuse its data and its port, so the bootstrap address stays the
    same across :meth:`stop` / :meth:`start` and :meth:`restart`.

    Usable as a context manager: ``with LocalKafka(d) as bootstrap: ...``
    starts the broker and always stops it on exit.
    """

    def __init__(self, dir: Path, port: int | None = None, sasl: bool = False) -> None:
        """Describe a broker in ``dir``; ``port`` pins the broker port on the first start.

        ``sasl`` starts it with ``kafka-local start --sasl`` (a second, SASL_PLAINTEXT listener);
        it must be set from the first start on, because SCRAM users are created at format time.
        """
        self.dir: Path = Path(dir).resolve()
        self._port = port
        self._sasl = sasl
        self._bootstrap: str | None = None

    @property
    def bootstrap(self) -> str:
        """The ``127.0.0.1:PORT`` bootstrap address; raises if the broker was never started."""
        if self._bootstrap is None:
            saved = self.dir / "port"
            if saved.is_file():
                return f"127.0.0.1:{saved.read_text().strip()}"
            raise KafkaLocalError(f"broker in {self.dir} has not been started")
        return self._bootstrap

    @property
    def sasl_bootstrap(self) -> str:
        """The ``127.0.0.1:PORT`` address of the SASL_PLAINTEXT listener (``sasl=True`` only)."""
        if not self._sasl:
            raise KafkaLocalError(f"broker in {self.dir} was not started with sasl=True")
        return self._run(["sasl-address", "--dir", str(self.dir)], timeout=_STOP_TIMEOUT_S).strip()

    @property
    def sasl_username(self) -> str:
        """The test user of the SASL listener (for PLAIN and SCRAM-SHA-512 alike)."""
        return self._sasl_file("sasl-username")

    @property
    def sasl_password(self) -> str:
        """That user's password: random per broker directory, test-only."""
        return self._sasl_file("sasl-password")

    def _sasl_file(self, name: str) -> str:
        path = self.dir / name
        if not self._sasl or not path.is_file():
            raise KafkaLocalError(f"broker in {self.dir} has no SASL listener (use sasl=True)")
        return path.read_text().strip()

    @property
    def log_file(self) -> Path:
        """The broker's log4j log file."""
        return self.dir / "kafka.log"

    def start(self) -> str:
        """Start the broker (no-op if already running), wait until it is ready, return bootstrap."""
        args = ["start", "--dir", str(self.dir)]
        if self._port is not None:
            args += ["--port", str(self._port)]
        if self._sasl:
            args.append("--sasl")
        try:
            out = self._run(args, timeout=_START_TIMEOUT_S).strip()
        except KafkaLocalError:
            # The script may have been cut off after launching the JVM: don't leak it.
            with contextlib.suppress(KafkaLocalError):
                self.stop(kill=True)
            raise
        if not out.startswith("127.0.0.1:"):
            raise KafkaLocalError(f"unexpected output from kafka-local start: {out!r}")
        self._bootstrap = out
        return out

    def stop(self, kill: bool = False) -> None:
        """Stop the broker with SIGTERM (controlled shutdown), or SIGKILL if ``kill``.

        A no-op if it is not running. A SIGTERM'd broker still alive after 30 s is killed.
        """
        args = ["stop", "--dir", str(self.dir)]
        if kill:
            args.append("--kill")
        self._run(args, timeout=_STOP_TIMEOUT_S)

    def restart(self, kill: bool = False) -> str:
        """Stop (SIGKILL if ``kill``) and start again on the same address; return bootstrap."""
        self.stop(kill=kill)
        return self.start()

    def is_running(self) -> bool:
        """Whether the broker process is alive and its port accepts connections."""
        proc = subprocess.run(
            [str(KAFKA_LOCAL), "status", "--dir", str(self.dir)],
            capture_output=True,
            text=True,
            timeout=_STOP_TIMEOUT_S,
            check=False,
        )
        return proc.returncode == 0

    def __enter__(self) -> str:
        """Start the broker and return its bootstrap address."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the broker."""
        self.stop()

    def _run(self, args: list[str], timeout: float) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            proc = subprocess.run(
                [str(KAFKA_LOCAL), *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise KafkaLocalError(f"kafka-local {' '.join(args)} timed out after {timeout}s") from e
        if proc.returncode != 0:
            raise KafkaLocalError(
                f"kafka-local {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
            )
        return proc.stdout
