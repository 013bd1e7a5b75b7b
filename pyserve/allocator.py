"""Keep request-sized buffers in the heap, so large bodies do not pay page faults per copy.

glibc serves allocations above 128 KiB with a fresh mmap and returns them to the kernel on
free, so every copy of a 1 MiB body (HTTP read, frame, ring, response) touched 256 new
pages: measured, echo of 1 MiB took 6.5 ms p50 that way and 1.6 ms with these thresholds,
the same as a bare Starlette app. The price is that up to TRIM_THRESHOLD of freed memory
stays with the process. Users who prefer otherwise set glibc's own MALLOC_MMAP_THRESHOLD_
or MALLOC_TRIM_THRESHOLD_, which are then left alone.
"""

from __future__ import annotations

import os

from pyserve import _core

MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 64 * 1024 * 1024
GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune_allocator() -> bool:
    """Raises the thresholds unless the user set glibc's; True if they were raised."""
    if any(name in os.environ for name in GLIBC_VARIABLES):
        return False
    _core.tune_allocator(MMAP_THRESHOLD, TRIM_THRESHOLD)
    return True
