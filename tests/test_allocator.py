"""Large buffers are reused from the heap instead of being mapped afresh for every copy, and
what is freed beyond TRIM_THRESHOLD goes back to the system."""

from __future__ import annotations

import os
import subprocess
import sys

from pyserve.allocator import TRIM_THRESHOLD

# Allocates and frees an 8 MiB buffer ten times, touching every page; prints the page faults
# the last nine cycles cost and what tune_allocator() answered.
CYCLES = """
import resource
from pyserve.allocator import tune_allocator
tuned = tune_allocator()
def cycle():
    buffer = bytearray(8 << 20)
    buffer[::4096] = b"x" * len(buffer[::4096])
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(9):
    cycle()
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = (8 << 20) // 4096


def page_faults(env: dict[str, str]) -> tuple[str, int]:
    finished = subprocess.run([sys.executable, "-P", "-c", CYCLES], capture_output=True,
                              text=True, check=True, env=env)
    tuned, faults = finished.stdout.split()
    return tuned, int(faults)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}


def test_a_freed_large_buffer_is_reused_without_new_page_faults():
    tuned, faults = page_faults(clean_env())
    assert tuned == "True"
    assert faults < PAGES  # nine fresh mappings would fault 9 x PAGES times


def test_glibc_thresholds_set_by_the_user_are_left_alone():
    tuned, faults = page_faults(dict(clean_env(), MALLOC_MMAP_THRESHOLD_="131072"))
    assert tuned == "False"
    assert faults >= 9 * PAGES  # the user's choice: every cycle maps and faults afresh


# Allocates 300 MiB in 1 MiB blocks, each followed by a small block that is kept (so the top of
# the heap cannot shrink past them), frees the large ones and waits for the trimmer; prints the
# resident memory before, at the peak, and after.
FREED_BELOW_THE_TOP = """
import os, time
from pyserve.allocator import tune_allocator
def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
tune_allocator()
before = resident()
blocks, kept = [], []
for _ in range(300):
    block = bytearray(1 << 20)
    block[::4096] = b"x" * len(block[::4096])
    blocks.append(block)
    kept.append(bytearray(1024))
peak = resident()
del blocks
time.sleep(3)
print(before, peak, resident())
"""


def test_freed_memory_beyond_the_trim_threshold_goes_back_to_the_system():
    finished = subprocess.run([sys.executable, "-P", "-c", FREED_BELOW_THE_TOP], capture_output=True,
                              text=True, check=True, env=clean_env())
    before, peak, after = map(int, finished.stdout.split())
    assert peak - before > 250 << 20
    assert after - before < TRIM_THRESHOLD + (16 << 20), f"kept {(after - before) >> 20} MiB"
