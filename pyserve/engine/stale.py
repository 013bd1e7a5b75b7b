"""Shared-memory segments left by a pyserve that died without cleaning up (SIGKILL, OOM).

Every segment a server creates is named /pyserve.<pid>.*; when that pid is gone, or now
belongs to a process that is not pyserve, nobody will unlink it, so the next start does.
Only segments owned by this user are touched.
"""

from __future__ import annotations

import logging
import os
import re

from pyserve.processes import is_pyserve

log = logging.getLogger("pyserve.engine")

SHM_DIR = "/dev/shm"
SEGMENT = re.compile(r"pyserve\.(\d+)\.")


def remove_stale_segments(directory: str = SHM_DIR) -> list[str]:
    """Unlinks this user's segments whose server is gone; returns their names."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        match = SEGMENT.match(name)
        if not match or int(match.group(1)) == os.getpid() or is_pyserve(int(match.group(1))):
            continue
        path = os.path.join(directory, name)
        try:
            if os.stat(path).st_uid != os.getuid():
                continue
            os.unlink(path)
        except OSError:
            continue
        removed.append(name)
    if removed:
        log.warning("removed %d shared-memory segment(s) left by servers that died: %s",
                    len(removed), ", ".join(sorted(removed)))
    return removed
