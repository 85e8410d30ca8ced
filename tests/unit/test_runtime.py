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
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
if TUNE:
    from tagging_sidecar.runtime import tune_allocator
    tune_allocator()
# A large block freed, then another: is the second mapped on its own (and so unmapped when
# freed), or carved from the heap?
libc.free(libc.malloc(4 << 20))
before = libc.mallinfo2().hblks
block = libc.malloc(512 << 10)
mapped = libc.mallinfo2().hblks - before
libc.free(block)
# Eight threads allocating at once: how many arenas serve them?
together = threading.Barrier(8)
def allocate():
    held = libc.malloc(64)
    together.wait()
    libc.free(held)
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads: thread.start()
for thread in threads: thread.join()
path = tempfile.mktemp()
stream = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, stream)
libc.fclose(stream)
heaps = open(path).read().count("<heap nr=")
os.unlink(path)
print(mapped, heaps)
"""


def _allocator_probe(tune: bool) -> tuple[int, int]:
    mapped, heaps = python_output(f"TUNE = {tune}\n{_ALLOCATOR}", timeout=60).split()
    return int(mapped), int(heaps)


def test_large_blocks_stay_mapped_and_threads_share_two_arenas() -> None:
    # glibc on its own: the freed 4 MiB block raised the threshold, and every thread got an
    # arena of its own. This is what the tuning changes.
    mapped, heaps = _allocator_probe(tune=False)
    assert mapped == 0 and heaps > 2
    assert _allocator_probe(tune=True) == (1, 2)


def test_the_allocator_is_left_as_the_environment_sets_it() -> None:
    probe = (
        "import os\n"
        "os.environ['MALLOC_ARENA_MAX'] = '4'\n"
        "from tagging_sidecar.runtime import tune_allocator\n"
        "print(','.join(tune_allocator()))\n"
    )
    assert python_output(probe, timeout=60).strip() == "MALLOC_MMAP_THRESHOLD_"


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
