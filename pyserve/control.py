"""Starting pyserve in the background and stopping it, through a pid file as TorchServe does.

`pyserve start` returns only once the server listens and its startup models are loaded
(the server reports on a pipe), and `pyserve stop` returns only once the server and all
its workers are gone, so scripts can rely on both.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

READY_FD_ENV = "PYSERVE_READY_FD"
STOP_TIMEOUT_SECONDS = 60


def pid_file() -> Path:
    return Path(tempfile.gettempdir()) / ".pyserve.pid"


def running_pid() -> int | None:
    """The pid of the server named in the pid file, if that process still runs."""
    try:
        pid = int(pid_file().read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def claim_pid_file() -> bool:
    """Records this process as the running server; False if another one runs."""
    if running_pid() not in (None, os.getpid()):
        return False
    pid_file().write_text(f"{os.getpid()}\n")
    return True


def release_pid_file() -> None:
    try:
        if int(pid_file().read_text().strip()) == os.getpid():
            pid_file().unlink()
    except (OSError, ValueError):
        pass


def report_ready(message: str) -> None:
    """Called by a server started in the background: tells the waiting `pyserve start`."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None:
        return
    with os.fdopen(int(fd), "w") as pipe:
        pipe.write(message)


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


def write_loopback_config(path: Path, **values: object) -> tuple[int, int, int]:
    """A config.properties with the three listeners on free loopback ports and token
    authorization off, unless `values` say otherwise; returns the (inference, management,
    metrics) ports. For servers started by tools and tests, not by users."""
    ports = free_ports(3)
    values = {"inference_address": f"http://127.0.0.1:{ports[0]}",
              "management_address": f"http://127.0.0.1:{ports[1]}",
              "metrics_address": f"http://127.0.0.1:{ports[2]}",
              "disable_token_authorization": "true", **values}
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    return ports[0], ports[1], ports[2]


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
) -> tuple[subprocess.Popen, str]:
    """Runs `pyserve start --foreground <arguments>` and waits for its report.

    The report starts with "ready" once the server listens with its startup models
    loaded; otherwise it says what went wrong (or is empty if the server just exited).
    `launcher`: a command that runs the server, which it is appended to (`unshare ...`).
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
    with os.fdopen(read_end) as pipe:
        report = pipe.read()  # the server closes its end once ready, or by exiting
    return process, report


def start_background(arguments: list[str], log_dir: Path) -> tuple[int, str]:
    """Starts a detached server; returns (exit code, what to tell the user)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "pyserve.log"
    with open(log_path, "ab") as log:
        process, report = spawn_server(arguments, log=log, detach=True)
    if report.startswith("ready"):
        return 0, report.replace("ready", f"pyserve started (pid {process.pid}); log: {log_path}", 1)
    code = process.wait()
    return code or 1, report or f"pyserve exited with code {code}; see {log_path}"


def stop() -> str:
    pid = running_pid()
    if pid is None:
        pid_file().unlink(missing_ok=True)
        return "pyserve is not currently running."
    pidfd = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGTERM)
        if not select.select([pidfd], [], [], STOP_TIMEOUT_SECONDS)[0]:
            os.kill(pid, signal.SIGKILL)
            select.select([pidfd], [], [], STOP_TIMEOUT_SECONDS)
    finally:
        os.close(pidfd)
    pid_file().unlink(missing_ok=True)
    return "pyserve has stopped."
