"""Interpreter tuning for a long-running process that moves many short-lived objects.

CPython's cyclic garbage collector runs a young collection every 700 allocations of container
objects. The hot path allocates a few per record (the record, its partition tuple, its chunk's
share), and a record lives for a call's round trip, so with the default threshold every record
in flight survives several collections, is promoted, and makes the full collections that follow
scan the whole heap: measured, a third of the poll thread's time per record. Records are never
part of reference cycles, so collecting less often changes when memory is freed only for the
rare cyclic garbage, which the collector still finds.

glibc's allocator, by default, raises its mmap threshold to the size of each large block freed
(up to 32 MiB), so the buffers of a call (an encoded batch of 2,000 records is about 450 KiB)
come to live in the heap and fragment it; and it gives threads up to eight arenas per core.
Against a downstream that keeps several calls in flight, the sidecar's peak RSS was 153-164 MiB
over a drain of 1,000,000 records; with a fixed threshold and two arenas, 140-150.
"""

from __future__ import annotations

import ctypes
import gc
import os

#: allocations between two young collections (CPython's default is 700)
YOUNG_THRESHOLD = 50_000


def tune_garbage_collector() -> None:
    """Exempt everything built so far (modules, settings, clients) from collections, and
    collect the young generation every :data:`YOUNG_THRESHOLD` allocations."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)


#: blocks at least this large are mapped on their own and unmapped when freed (glibc's initial
#: threshold, kept fixed instead of rising with every large block freed)
MMAP_THRESHOLD = 128 * 1024
#: malloc arenas shared by all threads (glibc's default is eight per core)
ARENA_MAX = 2
_M_MMAP_THRESHOLD = -3  # mallopt parameters, from glibc's malloc.h
_M_ARENA_MAX = -8


def tune_allocator() -> list[str]:
    """Under glibc, fix the mmap threshold at :data:`MMAP_THRESHOLD` and share
    :data:`ARENA_MAX` arenas, unless ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_ARENA_MAX`` in the
    environment set them already. Returns what was tuned (nothing elsewhere, e.g. on musl)."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return []
    tuned = []
    for variable, parameter, value in (
        ("MALLOC_MMAP_THRESHOLD_", _M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        ("MALLOC_ARENA_MAX", _M_ARENA_MAX, ARENA_MAX),
    ):
        if variable not in os.environ and mallopt(parameter, value) == 1:
            tuned.append(variable)
    return tuned


def tune_process() -> None:
    """All of this module's tuning, once, before the sidecar starts its threads."""
    tune_allocator()
    tune_garbage_collector()
