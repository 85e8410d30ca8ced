"""Helpers to run the sidecar as a real process and to read a group's offsets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ClassVar

from confluent_kafka import Consumer, TopicPartition


def sidecar_env(
    bootstrap: str, topic: str, group: str, target: str, **extra: str
) -> dict[str, str]:
    """Environment for ``tagging-sidecar run``: the current one minus TAGGING_*, plus these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGGING_")}
    env.update(
        {
            "TAGGING_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "TAGGING_KAFKA__TOPICS": topic,
            "TAGGING_KAFKA__GROUP_ID": group,
            "TAGGING_GRPC__TARGET": target,
            "TAGGING_HTTP__PORT": "0",
            "TAGGING_LOG__FORMAT": "json",
            "TAGGING_KAFKA__COMMIT_INTERVAL": "0.2",
        }
    )
    env.update({f"TAGGING_{k.upper()}": v for k, v in extra.items()})
    return env


class SidecarProcess:
    """``tagging-sidecar run`` in a child process, its log in a file."""

    #: every process started, so a failed test cannot leave one running (see conftest.py)
    started: ClassVar[list[SidecarProcess]] = []

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        SidecarProcess.started.append(self)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tagging_sidecar.cli", "run"],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

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


def offsets(bootstrap: str, group: str, topic: str, partitions: int) -> tuple[list[int], list[int]]:
    """(committed offsets of ``group``, log-end offsets) of every partition of ``topic``."""
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


def all_committed(bootstrap: str, group: str, topic: str, partitions: int) -> Callable[[], bool]:
    """A check for ``eventually``: the group committed every partition up to its log end."""

    def check() -> bool:
        committed, ends = offsets(bootstrap, group, topic, partitions)
        return committed == ends

    return check


def all_received(path: Path, ids: list[str]) -> Callable[[], bool]:
    """A check for ``eventually``: the sink recorded every one of ``ids``."""
    wanted = set(ids)
    return lambda: wanted <= set(read_ids(path))


def read_ids(path: Path) -> list[str]:
    """Ids the sink recorded, in arrival order (duplicates kept)."""
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line]


def eventually(
    predicate: Callable[[], bool], timeout: float = 120.0, interval: float = 0.2
) -> None:
    """Wait for something another process will do; fail if it never happens."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s")
        time.sleep(interval)
