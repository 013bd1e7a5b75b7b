"""Other processes as /proc shows them: whether one runs, its children, its CPU time.

`pyserve start` and `stop` trust their pid file only when it names a pyserve server of
this user (is_pyserve); the tests and benchmarks watch servers and their workers through
these.
"""

from __future__ import annotations

import os

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, ...)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def _parents() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            parents[int(entry)] = int(fields[1])
    return parents


def children(pid: int) -> set[int]:
    return {child for child, parent in _parents().items() if parent == pid}


def descendants(pid: int) -> list[int]:
    """pid and every process below it."""
    below: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        below.setdefault(parent, []).append(child)
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(below.get(current, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time these processes have used so far."""
    ticks = 0
    for pid in pids:
        if (fields := _stat(pid)) is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def _command_line(pid: int) -> bytes:
    """The process's arguments, NUL-separated; empty once it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read()
    except OSError:
        return b""


def command_has(pid: int, part: bytes) -> bool:
    """Whether the process's command line holds `part`; False once it is gone."""
    return part in _command_line(pid)


def is_mine(pid: int) -> bool:
    """The process runs as this user (a pid file or folder name alone proves nothing)."""
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.getuid()
    except OSError:
        return False


def is_pyserve(pid: int) -> bool:
    """A pyserve server of this user: `pyserve start` (or `python -m pyserve start`), alive."""
    if not alive(pid) or not is_mine(pid):
        return False
    arguments = _command_line(pid).split(b"\0")
    return any(os.path.basename(argument) == b"pyserve" and arguments[i + 1:i + 2] == [b"start"]
               for i, argument in enumerate(arguments))


def is_frontend_process(pid: int) -> bool:
    return command_has(pid, b"pyserve.frontend.process")
