"""access_log.log: one line per answered request, in TorchServe's shape.

    2024-05-01T12:00:00,123 - /127.0.0.1:53914 "POST /predictions/echo HTTP/1.1" 200 12

that is the client's address as Java writes it, the request line as received (the HTTP parser
refuses control characters in it, so it cannot forge a line), the status and the
milliseconds from the request's head to its answer. Every listener of every process
writes here. The line is built when uvicorn starts a response and would call its access
logger: each connection's `ConnectionAccessLog` stands in for that logger, so no ASGI layer
is added to the request path, and the line costs a few string operations and a list append
(see pyserve.line_file).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pyserve.line_file import Clock, LineFile
from pyserve.logs import log_location

FILE_NAME = "access_log.log"

_file: LineFile | None = None
_clock = Clock()


def open_access_log(directory: Path | None = None,
                    loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Starts this process's access log, in `directory` (default: LOG_LOCATION)."""
    global _file
    _file = LineFile((directory or log_location()) / FILE_NAME)
    _file.start(loop)


def close_access_log() -> None:
    global _file
    if _file is not None:
        _file.close()
        _file = None


class ConnectionAccessLog:
    """What uvicorn's request cycles of one connection take for their access logger.

    uvicorn calls `info` as the response starts, with the client, method, path, HTTP version
    and status; the connection (pyserve.frontend.connection) stamps each request's start
    on its cycle (`started_at`, loop time) and keeps its unanswered cycles oldest first, so
    the one answering is the first."""

    def __init__(self, connection, file: LineFile):
        self.connection = connection
        self.file = file

    def info(self, _format: str, client: str, method: str, _path: str, version: str,
             status: int) -> None:
        # Not uvicorn's `_path`: it is decoded, and may have lost a trailing slash since
        # (pyserve.frontend.http); TorchServe logs the request target as received.
        cycle = self.connection.answering()
        if cycle is None:
            return
        scope = cycle.scope
        target = scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target = f"{target}?{scope['query_string'].decode('latin-1')}"
        loop = self.connection.loop
        duration = int((loop.time() - cycle.started_at) * 1000)
        self.file.write(f'{_clock.stamp()} - /{client} "{method} {target} HTTP/{version}" '
                        f"{status} {duration}\n")


def for_connection(connection) -> ConnectionAccessLog | None:
    """The access logger of a new connection; None while no access log is open."""
    return ConnectionAccessLog(connection, _file) if _file is not None else None
