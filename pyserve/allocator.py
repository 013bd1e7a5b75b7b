"""Keep request-sized buffers in the heap, so large bodies do not pay page faults per copy,
and give back what is freed beyond TRIM_THRESHOLD.

glibc serves allocations above 128 KiB with a fresh mmap and returns them to the kernel on
free, so every copy of a 1 MiB body (HTTP read, frame, ring, response) touched 256 new
pages: measured, echo of 1 MiB took 6.5 ms p50 that way and 1.6 ms with these thresholds,
the same as a bare Starlette app. The price is freed memory that stays with the process:
glibc gives back only the top of its heap past M_TRIM_THRESHOLD, so memory freed below a
block still in use stayed for good (measured: a frontend kept 1 GB after 200 clients left,
each with a 6 MB answer unread). So a thread looks at the heap's free memory every
TRIM_INTERVAL seconds and, past TRIM_THRESHOLD, gives the free pages back (malloc_trim):
about TRIM_THRESHOLD of freed memory at most stays with the process for longer than that. Users
who prefer otherwise set glibc's own MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_, which
are then left alone, and nothing is trimmed.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time

from pyserve import _core

MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 64 * 1024 * 1024
TRIM_INTERVAL = 1.0  # seconds
GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def tune_allocator() -> bool:
    """Raises the thresholds and starts trimming unless the user set glibc's; True if it did."""
    if any(name in os.environ for name in GLIBC_VARIABLES):
        return False
    _core.tune_allocator(MMAP_THRESHOLD, TRIM_THRESHOLD)
    libc = ctypes.CDLL(None)
    if hasattr(libc, "mallinfo2"):  # glibc 2.33 and later
        libc.mallinfo2.restype = _MallInfo2
        threading.Thread(target=_trim_forever, args=(libc,), name="pyserve-trim", daemon=True).start()
    return True


def _trim_forever(libc) -> None:
    """Trims when the heap's free memory is past TRIM_THRESHOLD and either it, or the process,
    grew by TRIM_THRESHOLD since the last trim: a heap already trimmed is not walked again
    every second (its free chunks still count as free once given back)."""
    free_after = resident_after = 0
    while True:
        time.sleep(TRIM_INTERVAL)
        free = libc.mallinfo2().fordblks  # without the GIL, as malloc_trim
        free_after = min(free_after, free)  # memory taken from the free chunks is resident again
        if free > TRIM_THRESHOLD and (free > free_after + TRIM_THRESHOLD
                                      or _resident() > resident_after + TRIM_THRESHOLD):
            libc.malloc_trim(ctypes.c_size_t(TRIM_THRESHOLD))
            free_after, resident_after = libc.mallinfo2().fordblks, _resident()


def _resident() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * PAGE_SIZE
