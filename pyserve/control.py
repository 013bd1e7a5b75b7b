"""Starting pyserve in the background and stopping it, through a pid file as TorchServe does.

`pyserve start` returns only once the server listens and its startup models are loaded
(the server reports on a pipe), and `pyserve stop` returns only once the server and all
its workers are gone, so scripts can rely on both. The pid file is per user, mode 0600,
and trusted only when it names a live pyserve server of this user.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pyserve.log_tail import LogTail
from pyserve.processes import is_pyserve

READY_FD_ENV = "PYSERVE_READY_FD"
STOP_TIMEOUT_SECONDS = 60
WAIT_STEP_SECONDS = 0.1  # how often a waiting `pyserve start` copies the server's new log lines
STARTED = "Model server started."  # torchserve prints it once it serves; scripts wait for it


ALREADY_RUNNING = "pyserve is already running, please use pyserve stop to stop it."
PID_FILE_NAME = f".pyserve-{os.getuid()}.pid"  # one per user: /tmp is shared


def pid_file() -> Path:
    return Path(tempfile.gettempdir()) / PID_FILE_NAME


def _recorded_pid() -> int | None:
    """The pid in the pid file, if the file is this user's own (another user could have
    made one under this name in a shared /tmp)."""
    try:
        descriptor = os.open(pid_file(), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(descriptor) as file:
        if os.fstat(descriptor).st_uid != os.getuid():
            return None
        try:
            return int(file.read(32).strip())
        except ValueError:
            return None


def running_pid() -> int | None:
    """The server the pid file names, if it is a live pyserve server of this user: any other
    pid written there is never signalled."""
    pid = _recorded_pid()
    return pid if pid is not None and is_pyserve(pid) else None


def _remove_pid_file() -> None:
    try:
        pid_file().unlink()
    except OSError:  # gone already, or another user's that this one may not remove
        pass


def claim_pid_file() -> str | None:
    """Records this process as the running server; says why not if it cannot."""
    if running_pid() not in (None, os.getpid()):
        return ALREADY_RUNNING
    # A new file (mkstemp: mode 0600) renamed over whatever was there.
    descriptor, temporary = tempfile.mkstemp(dir=pid_file().parent, prefix=f"{PID_FILE_NAME}.")
    with os.fdopen(descriptor, "w") as file:
        file.write(f"{os.getpid()}\n")
    try:
        os.replace(temporary, pid_file())
    except OSError as error:
        os.unlink(temporary)
        return f"cannot write the pid file {pid_file()}: {error.strerror}"
    return None


def release_pid_file() -> None:
    if _recorded_pid() == os.getpid():
        _remove_pid_file()


def report_ready(message: str) -> None:
    """Called by a server started in the background: tells the waiting `pyserve start`."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None:
        return
    with os.fdopen(int(fd), "w", encoding="utf-8") as pipe:
        pipe.write(message)


def announce_ready(message: str) -> None:
    """A foreground server's on_ready: `Model server started.` on stdout when it is ready, as
    torchserve prints it, then the report to a waiting `pyserve start` (report_ready)."""
    if message.startswith("ready"):
        print(STARTED, flush=True)  # before the report: a starter copying the log finds it there
    report_ready(message)


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports: all probes stay bound until every port is chosen."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def write_loopback_config(path: Path, **values: object) -> None:
    """A config.properties with the five listeners (three HTTP, two gRPC) on loopback port 0
    (the kernel picks free ones as the server binds them: see listening_ports) and token
    authorization off, unless `values` say otherwise. For servers started by tools and tests,
    not by users."""
    values = {"inference_address": "http://127.0.0.1:0", "management_address": "http://127.0.0.1:0",
              "metrics_address": "http://127.0.0.1:0", "grpc_inference_port": 0,
              "grpc_management_port": 0, "disable_token_authorization": "true", **values}
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))


LISTENING = re.compile(r"^listening: (.*)$", re.MULTILINE)


def listening_line(addresses: dict[str, str]) -> str:
    """The line of a server's ready report that says where it listens ({name: URL}, port 0
    resolved)."""
    return "listening: " + ", ".join(f"{name} {url}" for name, url in addresses.items())


def listening_ports(report: str) -> dict[str, int]:
    """{listener name: port} from a ready report (see listening_line)."""
    found = LISTENING.search(report)
    if found is None:
        return {}
    return {name: int(url.rsplit(":", 1)[1])
            for name, url in (item.split(" ", 1) for item in found.group(1).split(", "))}


def stop_process(process: subprocess.Popen, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
    """SIGTERM, then SIGKILL if it is still there after `timeout`; returns its exit code."""
    if process.poll() is None:
        process.terminate()
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def spawn_server(
    arguments: list[str],
    *,
    log,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    detach: bool = False,
    launcher: list[str] | None = None,
    while_waiting: Callable[[], None] | None = None,
) -> tuple[subprocess.Popen, str]:
    """Runs `pyserve start --foreground <arguments>` and waits for its report.

    The report starts with "ready" once the server listens with its startup models
    loaded; otherwise it says what went wrong (or is empty if the server just exited).
    `launcher`: a command that runs the server, which it is appended to (`unshare ...`).
    `while_waiting`: called every WAIT_STEP_SECONDS until the report is in.
    """
    read_end, write_end = os.pipe()
    env = dict(os.environ if env is None else env, **{READY_FD_ENV: str(write_end)})
    try:
        process = subprocess.Popen(
            # -P: the server imports the installed pyserve even when started from a checkout.
            [*(launcher or []), sys.executable, "-P", "-m", "pyserve", "start", "--foreground",
             *arguments],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
            pass_fds=(write_end,), start_new_session=detach,
        )
    finally:
        os.close(write_end)
    return process, _wait_for_report(read_end, while_waiting)


def _wait_for_report(read_end: int, while_waiting: Callable[[], None] | None) -> str:
    """All the server writes on the pipe: it closes its end once ready, or by exiting."""
    chunks = []
    with os.fdopen(read_end, "rb") as pipe:
        while True:
            if select.select([pipe], [], [], WAIT_STEP_SECONDS if while_waiting else None)[0]:
                chunk = os.read(read_end, 65536)
                if not chunk:
                    return b"".join(chunks).decode("utf-8", errors="replace")
                chunks.append(chunk)
            if while_waiting:
                while_waiting()


def start_background(arguments: list[str], log_dir: Path, terminal: BinaryIO) -> tuple[int, str]:
    """Starts a detached server, copying its log to `terminal` up to `Model server started.`
    (all of it if it fails to start); returns (exit code, what to tell the user)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "pyserve.log"
    with open(log_path, "ab") as log:
        tail = LogTail(log_path, STARTED, terminal)
        try:
            process, report = spawn_server(arguments, log=log, detach=True, while_waiting=tail.copy)
            ready = report.startswith("ready")
            code = 0 if ready else process.wait()
            tail.copy(to_the_end=not ready)
        finally:
            tail.close()
    if ready:
        return 0, report.replace("ready", f"pyserve started (pid {process.pid}); log: {log_path}", 1)
    return code or 1, report or f"pyserve exited with code {code}; see {log_path}"


def stop() -> str:
    pid = _recorded_pid()
    try:
        # The pidfd holds on to the process checked here, even if its pid is then reused.
        pidfd = os.pidfd_open(pid) if pid is not None else None
    except OSError:
        pidfd = None
    if pidfd is None or not is_pyserve(pid):
        if pidfd is not None:
            os.close(pidfd)
        _remove_pid_file()
        return "pyserve is not currently running."
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        if not select.select([pidfd], [], [], STOP_TIMEOUT_SECONDS)[0]:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            select.select([pidfd], [], [], STOP_TIMEOUT_SECONDS)
    except ProcessLookupError:  # it ended on its own meanwhile
        pass
    finally:
        os.close(pidfd)
    _remove_pid_file()
    return "pyserve has stopped."
