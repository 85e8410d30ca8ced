"""Interpreter tuning of the ``run`` command."""

from __future__ import annotations

import ctypes
import multiprocessing
from typing import Any, cast

import pytest

from tagging_sidecar import runtime
from tagging_sidecar.supervisor import ChildLink, child_main

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


# glibc's view of the allocator, for the probes below (in processes of their own: the tuning
# is process-wide and cannot be undone).
_ALLOCATOR = """
import ctypes, os, tempfile, threading
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.fopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
if TUNE:
    from tagging_sidecar.runtime import tune_allocator
    tune_allocator()
# Eight threads allocating at once: how many arenas serve them?
together = threading.Barrier(8)
def allocate():
    held = libc.malloc(64)
    together.wait()
    libc.free(held)
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads: thread.start()
for thread in threads: thread.join()
descriptor, path = tempfile.mkstemp()
os.close(descriptor)
stream = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, stream)
libc.fclose(stream)
heaps = open(path).read().count("<heap nr=")
os.unlink(path)
print(heaps)
"""


def _arenas(tune: bool) -> int:
    return int(python_output(f"TUNE = {tune}\n{_ALLOCATOR}", timeout=60))


def test_threads_share_two_arenas() -> None:
    # glibc on its own gives every thread an arena of its own (up to eight per core).
    assert _arenas(tune=False) > 2
    assert _arenas(tune=True) == 2


def test_the_allocator_is_left_as_the_environment_sets_it() -> None:
    probe = (
        "import os\n"
        "os.environ['MALLOC_ARENA_MAX'] = '4'\n"
        "from tagging_sidecar.runtime import tune_allocator\n"
        "print(tune_allocator())\n"
    )
    assert python_output(probe, timeout=60).strip() == "False"


def test_each_child_process_is_tuned_like_a_single_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Tuned(Exception):
        """Stops the child once it has tuned itself."""

    def tuned() -> None:
        raise Tuned

    monkeypatch.setattr(runtime, "tune_process", tuned)
    link = ChildLink(multiprocessing.RawValue(ctypes.c_double, 0.0),
                     multiprocessing.RawValue(ctypes.c_int, 0))  # fmt: skip
    with pytest.raises(Tuned):
        child_main(cast(Any, None), 0, link)
