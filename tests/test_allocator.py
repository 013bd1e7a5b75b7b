"""Large buffers are reused from the heap instead of being mapped afresh for every copy."""

from __future__ import annotations

import os
import subprocess
import sys

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
