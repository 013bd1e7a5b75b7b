"""A file of lines, cheap enough for a line per request, stamped as log4j2 stamps them.

The access log and the metric files take a line per request or event, so `LineFile` only
appends the line to a list; the lines are written a few times a second (FLUSH_SECONDS) with
one write() on a file opened O_APPEND. Every process that answers requests appends to the
same files this way: a write to an O_APPEND file lands whole at its end, so lines of
different processes never interleave. `Clock` stamps lines as log4j2's `%d{ISO8601}`
(`2024-05-01T12:00:00,123`), formatting the date once per second.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("pyserve")

FLUSH_SECONDS = 0.25
MAX_BUFFERED_LINES = 4096  # written at once past this, whatever the time


_MILLISECONDS = [f",{ms:03d}" for ms in range(1000)]


class Clock:
    """log4j2's ISO8601 timestamps; the seconds are formatted once per second."""

    def __init__(self):
        self._second = -1
        self._prefix = ""

    def stamp(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(second))
        return self._prefix + _MILLISECONDS[int((now - second) * 1000)]


class LineFile:
    """Lines appended to a file, written a few times a second by the running event loop
    (`start`), and by `flush`."""

    def __init__(self, path: Path):
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:  # as a full disk: lines are lost, never a request
            log.warning("cannot write %s: %s", path, error.strerror)
            self._fd = -1
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def write(self, line: str) -> None:
        """`line` must end with a newline."""
        self._lines.append(line)
        if len(self._lines) >= MAX_BUFFERED_LINES:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        data = "".join(self._lines).encode("utf-8", errors="replace")
        self._lines = []
        try:
            while data and self._fd >= 0:
                data = data[os.write(self._fd, data):]
        except OSError:
            pass  # a full disk loses lines, never a request

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._timer = self._loop.call_later(FLUSH_SECONDS, self._tick)

    def _tick(self) -> None:
        self.flush()
        self._timer = self._loop.call_later(FLUSH_SECONDS, self._tick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
