"""What pyserve writes to its logs: one line per event, and no flood of the same error.

Names, URLs and headers in log messages come from clients and archives: a newline in one
would start a line that looks like the server's own, so every message has its control
characters escaped (tracebacks, multi-line by nature, are left as they are). A failing
model fails every request: its traceback is logged once, then counted, not repeated.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import traceback
from typing import Callable

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


def configure_logging(role: str) -> None:
    """Log lines to stderr, each naming the process (`[server 1234]`), messages escaped."""
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s [{role} %(process)d] %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(EscapeControlCharacters())


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
