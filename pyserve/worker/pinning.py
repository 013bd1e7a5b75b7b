"""The worker's side of placement: pin the process to its cores and size torch's thread pool."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable

log = logging.getLogger("pyserve.worker")


def apply_in_worker(cpus: Iterable[int], threads: int) -> None:
    """In the worker: pin this process to `cpus` and size torch's thread pool.

    Never imports torch (the handler decides whether it is needed); when torch is not loaded
    yet, OMP_NUM_THREADS from `WorkerPlacement.environment()` sizes its pool when it loads.
    Cores this process may not use are a warning, not a failed worker.
    """
    cpus = set(cpus)
    if cpus:
        try:
            os.sched_setaffinity(0, cpus)
        except (OSError, ValueError) as error:
            log.warning("could not pin the worker to cores %s: %s", sorted(cpus), error)
    if threads > 0 and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
