"""The folder a server extracts its model archives into: one per server, named after its pid.

A server removes its own when it stops; one that was SIGKILLed cannot, so each start
removes the folders whose server is gone. Each server holds a lock on its folder (flock,
which the kernel drops when the process dies, however it dies), so a folder is a dead
server's exactly when nobody holds its lock: no guessing from pids, which are reused.
Folders of other users are left alone.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("pyserve.engine")

PREFIX = "pyserve-models-"
FOLDER = re.compile(re.escape(PREFIX) + r"\d+-")  # pyserve-models-<pid>-<random>


def make_extract_root() -> tuple[Path, int]:
    """A new folder in the temp folder and the descriptor holding its lock (keep it open
    while the server runs), after removing the folders of servers that are gone."""
    directory = Path(tempfile.gettempdir())
    remove_abandoned(directory)
    # Made under a hidden name and locked before it gets its own, so that a server starting
    # meanwhile never takes it for an abandoned one.
    hidden = Path(tempfile.mkdtemp(prefix=f".{PREFIX}{os.getpid()}-", dir=directory))
    descriptor = os.open(hidden, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    root = directory / hidden.name[1:]
    os.rename(hidden, root)
    return root, descriptor


def remove_abandoned(directory: Path) -> None:
    """Removes the extract folders in `directory` that are this user's and no server holds."""
    for entry in directory.glob(f"{PREFIX}*"):
        if FOLDER.match(entry.name) is None:
            continue
        try:
            descriptor = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            if os.fstat(descriptor).st_uid != os.getuid():
                continue
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its server runs
            shutil.rmtree(entry, ignore_errors=True)
            log.info("removed %s, left by a server that is gone", entry)
        finally:
            os.close(descriptor)
