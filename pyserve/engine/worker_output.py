"""What a worker prints, logged as TorchServe logs it: MODEL_LOG, into model_log.log.

A worker's stdout and stderr are pipes that the server reads on its event loop. Each line
becomes a record of the MODEL_LOG logger (INFO from stdout, WARN from stderr) whose thread is
named as TorchServe names its reader threads (`W-9000-echo_1.0-stdout`); as in TorchServe's
log4j2.xml, model_log.log, ts_log.log and the console show it (pyserve.logs).
"""

from __future__ import annotations

import asyncio
import logging
import os

from pyserve.logs import MODEL_LOGGER

log = logging.getLogger(MODEL_LOGGER)

READ_SIZE = 65536
MAX_LINE = 65536  # bytes; a longer line without a newline is logged in parts
MAX_FINAL_READS = 64  # reads of what is left once the worker exited (a pipe holds 64 KiB)


class OutputReader:
    """Logs the lines read from one of a worker's pipes until it closes (or `close`)."""

    def __init__(self, fd: int, origin: str, level: int, loop: asyncio.AbstractEventLoop):
        self.fd = fd
        self.origin = origin
        self.level = level
        self._loop = loop
        self._partial = b""
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._read)

    def _read(self) -> None:
        try:
            chunk = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            self._log(chunk)
        else:
            self.close()

    def _log(self, chunk: bytes) -> None:
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        if len(self._partial) >= MAX_LINE:
            lines.append(self._partial)
            self._partial = b""
        for line in lines:
            self._emit(line)

    def _emit(self, line: bytes) -> None:
        log.log(self.level, "%s", line.rstrip(b"\r").decode("utf-8", errors="replace"),
                extra={"origin": self.origin})

    def close(self) -> None:
        """Logs what is left to read, then stops reading. The worker has exited by then, so
        this is all it wrote (a process it started may hold the pipe: it is not waited for)."""
        if self.fd < 0:
            return
        self._loop.remove_reader(self.fd)
        try:
            for _ in range(MAX_FINAL_READS):
                chunk = os.read(self.fd, READ_SIZE)
                if not chunk:
                    break
                self._log(chunk)
        except OSError:  # BlockingIOError: nothing more for now
            pass
        if self._partial:
            self._emit(self._partial)
            self._partial = b""
        os.close(self.fd)
        self.fd = -1
