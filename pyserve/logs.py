"""What pyserve writes to its logs: one line per event, and no flood of the same error.

As TorchServe's log4j2.xml has it, the server's log goes to the console (stdout) and to
ts_log.log under LOG_LOCATION, and what workers print (MODEL_LOG, see
pyserve.engine.worker_output) to model_log.log as well, every line shaped as log4j2's
`%d{ISO8601} [%-5p] %t %c - %m%n` writes it:

    2024-05-01T12:00:00,123 [INFO ] server-4242 pyserve - model echo:1.0 is served ...

Workers log to their stdout with the message alone, as TorchServe's do: the server reads it.

Names, URLs and headers in log messages come from clients and archives: a newline in one
would start a line that looks like the server's own, so every message has its control
characters escaped (tracebacks, multi-line by nature, are left as they are). A failing
model fails every request: its traceback is logged once, then counted, not repeated.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Mapping

CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
REPEAT_WINDOW_SECONDS = 60.0
MAX_REMEMBERED_ERRORS = 256
MAX_SUMMARY_CHARACTERS = 1000


def escape_control_characters(text: str) -> str:
    """`text` with each control character written as an escape (\\n, \\x1b, \\u2028)."""
    if CONTROL_CHARACTERS.search(text) is None:
        return text
    return CONTROL_CHARACTERS.sub(
        lambda found: _NAMED.get(found[0]) or ascii(found[0])[1:-1], text)


class EscapeControlCharacters(logging.Filter):
    """On a handler: each record's message as one line, whatever its arguments held."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = escape_control_characters(message)
        if escaped is not message:
            record.msg, record.args = escaped, None
        return True


TS_LOG = "ts_log.log"
MODEL_LOG = "model_log.log"
MODEL_LOGGER = "MODEL_LOG"  # TorchServe's logger name for what workers print


def log_location(environ: Mapping[str, str] = os.environ) -> Path:
    """Where TorchServe writes its logs: $LOG_LOCATION, or `logs`."""
    return Path(environ.get("LOG_LOCATION") or "logs")


def metrics_location(environ: Mapping[str, str] = os.environ) -> Path:
    """Where TorchServe writes ts_metrics.log and model_metrics.log: $METRICS_LOCATION, or `logs`."""
    return Path(environ.get("METRICS_LOCATION") or "logs")


class TorchServeFormatter(logging.Formatter):
    """log4j2's `%d{ISO8601} [%-5p] %t %c - %m%n`. `%t`, TorchServe's thread, is the
    process (`server-4242`), or the `origin` a record carries (a worker's output)."""

    LEVELS = {"WARNING": "WARN", "CRITICAL": "FATAL"}

    def __init__(self, origin: str):
        super().__init__("%(asctime)s [%(level)-5s] %(origin)s %(name)s - %(message)s")
        self.origin = origin

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created))
        return f"{when},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        record.level = self.LEVELS.get(record.levelname, record.levelname)
        if not hasattr(record, "origin"):
            record.origin = self.origin
        return super().format(record)


def configure_logging(role: str, directory: Path | None = None) -> None:
    """The log of a `role` process ("server", "frontend" or "worker"), messages escaped.

    The server and frontend processes log to stdout and append to ts_log.log in `directory`
    (default: LOG_LOCATION); the server also writes model_log.log. A worker logs the message
    alone to its stdout."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if role == "worker":
        _add(root, logging.StreamHandler(sys.stdout), logging.Formatter("%(message)s"))
        return
    formatter = TorchServeFormatter(f"{role}-{os.getpid()}")
    _add(root, logging.StreamHandler(sys.stdout), formatter)
    directory = directory or log_location()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _add(root, logging.FileHandler(directory / TS_LOG, encoding="utf-8"), formatter)
        if role == "server":
            _add(logging.getLogger(MODEL_LOGGER),
                 logging.FileHandler(directory / MODEL_LOG, encoding="utf-8"), formatter)
    except OSError as error:
        logging.getLogger("pyserve").warning("cannot write log files in %s: %s", directory, error)


def _add(logger: logging.Logger, handler: logging.Handler, formatter: logging.Formatter) -> None:
    handler.setFormatter(formatter)
    handler.addFilter(EscapeControlCharacters())
    logger.addHandler(handler)


class RepeatedErrors:
    """Logs an error in full the first time, then only counts it for a minute.

    "The same error" is the same message template, exception type and traceback path
    (file and line of each frame), whatever the exception's text: a handler that fails on
    every request fails the same way with different inputs. The count is logged, in one
    line, with the first repeat after the minute; an error not seen for a minute is
    logged in full again.
    """

    def __init__(self, log: logging.Logger, window: float = REPEAT_WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.log = log
        self.window = window
        self.clock = clock
        self._seen: dict[tuple, list] = {}  # key -> [when last logged, repeats since]

    def error(self, message: str, *args: object, exc_info: bool = False) -> None:
        """log.error(message, *args), with the current exception's traceback if exc_info."""
        self.log_once(logging.ERROR, message, *args, exc_info=exc_info)

    def warning(self, message: str, *args: object) -> None:
        self.log_once(logging.WARNING, message, *args)

    def log_once(self, level: int, message: str, *args: object, exc_info: bool = False) -> None:
        error = sys.exception() if exc_info else None
        key = (message, *_where(error))
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.window:
            seen[1] += 1
            return
        if seen is not None and seen[1]:
            what = message % args
            if error is not None:
                what += f": {type(error).__name__}: {error}"[:MAX_SUMMARY_CHARACTERS]
            self.log.log(level, "%s (the same error %d more times in the last %d s; the first "
                         "is logged in full above)", escape_control_characters(what), seen[1] + 1,
                         now - seen[0])
        else:
            self.log.log(level, message, *args, exc_info=error)
        self._seen.pop(key, None)
        self._seen[key] = [now, 0]
        if len(self._seen) > MAX_REMEMBERED_ERRORS:
            del self._seen[next(iter(self._seen))]


def _where(error: BaseException | None) -> tuple:
    if error is None:
        return ()
    return (type(error), *((frame.f_code.co_filename, line)
                           for frame, line in traceback.walk_tb(error.__traceback__)))
