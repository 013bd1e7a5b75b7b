"""Shows a background server's log on the terminal of `pyserve start` until it is ready.

`torchserve --start` leaves the JVM on the caller's terminal, so its log scrolls by there up
to `Model server started.`, the line scripts wait for. A background pyserve writes its log
to a file instead; `pyserve start` copies what the server writes there, from where the file
ended when the server was started, up to and including that line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO


class LogTail:
    def __init__(self, path: Path, until: str, out: BinaryIO):
        self._file = open(path, "rb")
        self._file.seek(0, os.SEEK_END)
        self._until = until.encode()
        self._out = out
        self._partial = b""
        self.done = False  # the `until` line is copied: nothing more will be

    def copy(self, to_the_end: bool = False) -> None:
        """Copies the whole lines written since the last call (`to_the_end`: a last line that
        has no newline yet too), stopping after the `until` line."""
        if self.done:
            return
        lines = (self._partial + self._file.read()).split(b"\n")
        self._partial = lines.pop()
        if to_the_end and self._partial:
            lines.append(self._partial)
            self._partial = b""
        for line in lines:
            self._out.write(line + b"\n")
            if self._until in line:
                self.done = True
                break
        self._out.flush()

    def close(self) -> None:
        self._file.close()
