"""Run a Sidecar in a thread of the test process (real broker, real gRPC, no subprocess)."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

from tagging_sidecar.app import RunSummary, Sidecar
from tagging_sidecar.config import Settings


def make_settings(bootstrap: str, topic: str, group: str, target: str, **sections: Any) -> Settings:
    """Settings for a test run; ``sections`` override whole sections or fields, e.g.
    ``pool={"max_workers": 4}``."""
    data: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "topics": [topic],
            "group_id": group,
            "commit_interval": 0.2,
        },
        "grpc": {"target": target, "timeout": 5, "retry_max_backoff": 0.5},
        "http": {"port": 0},
        "shutdown": {"grace_period": 10},
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **value}
        else:
            data[name] = value
    return Settings(**data)


class RunningSidecar:
    """A Sidecar on a background thread; leaving the ``with`` block stops it like SIGTERM."""

    def __init__(self, settings: Settings) -> None:
        self.sidecar = Sidecar(settings)
        self.summary: RunSummary | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sidecar-under-test", daemon=True)

    def _run(self) -> None:
        try:
            self.summary = self.sidecar.run()
        except BaseException as exc:  # noqa: BLE001 - reported to the test by stop()
            self.error = exc

    def __enter__(self) -> RunningSidecar:
        self._thread.start()
        return self

    def stop(self, timeout: float = 60) -> RunSummary:
        """Ask the sidecar to drain and stop; return its summary or raise its error."""
        self.sidecar.stop_event.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("sidecar did not stop")
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread.is_alive():
            self.stop()
