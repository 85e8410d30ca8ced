"""Faults injected into sidecar child processes by tests (never reachable from configuration)."""

from __future__ import annotations

import threading
from pathlib import Path
from unittest import mock

from tagging_sidecar.config import Settings
from tagging_sidecar.supervisor import ChildLink, child_main


def wedge_on_marker(marker: Path, settings: Settings, index: int, link: ChildLink) -> None:
    """``child_main``, except that the first child to find ``marker`` deletes it and then blocks
    its poll loop for good, as a deadlock would: it stops ticking but its process lives on."""
    from tagging_sidecar.kafka.processor import StreamProcessor

    original = StreamProcessor.step

    def step(self: StreamProcessor) -> None:
        try:
            marker.unlink()
        except FileNotFoundError:
            original(self)
            return
        threading.Event().wait()

    with mock.patch.object(StreamProcessor, "step", step):
        child_main(settings, index, link)
