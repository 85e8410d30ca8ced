"""Interpreter tuning of the ``run`` command."""

from __future__ import annotations

from ..support.harness import python_output


def test_the_collector_skips_start_up_objects_and_collects_the_young_less_often() -> None:
    # In a process of its own: the tuning is process-wide.
    probe = (
        "import gc\n"
        "from tagging_sidecar.runtime import YOUNG_THRESHOLD, tune_garbage_collector\n"
        "default = gc.get_threshold()\n"
        "tune_garbage_collector()\n"
        "print(gc.get_threshold()[0] == YOUNG_THRESHOLD, gc.get_threshold()[1:] == default[1:],"
        " gc.get_freeze_count() > 1000)\n"
    )
    assert python_output(probe, timeout=60).split() == ["True", "True", "True"]
