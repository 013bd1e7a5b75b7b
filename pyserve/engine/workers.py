"""One worker process: how it is started, how its death is noticed, how it is stopped.

Death is noticed through a pidfd registered with the event loop, so the engine learns of
it the moment the kernel does, with no polling and no timeout.
"""

from __future__ import annotations

import asyncio
import datetime
import enum
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from pyserve.engine.worker_output import OutputReader

log = logging.getLogger("pyserve.engine")


class WorkerState(enum.Enum):
    STARTING = "STARTING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    FAILED = "FAILED"  # it failed to load (and has exited, or is on its way out)
    STOPPED = "STOPPED"


def worker_environment(model_dir: Path, extra_paths: list[str], extra: dict[str, str] | None = None
                       ) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(model_dir), *extra_paths]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class WorkerProcess:
    """A worker's process and what the engine knows about it."""

    def __init__(
        self,
        worker_id: int,
        model_dir: Path,
        channel_fds: tuple[int, int, int, int],
        on_exit: Callable[["WorkerProcess"], None],
        env: dict[str, str] | None = None,
        extra_paths: list[str] | None = None,
        name: str | None = None,
    ):
        self.id = worker_id
        self.name = name or f"W-{worker_id}"  # TorchServe's: W-9000-echo_1.0
        self.model_dir = model_dir
        self.state = WorkerState.STARTING
        self.start_time = datetime.datetime.now()
        self.exit_code: int | None = None
        self.load_error: str | None = None
        self.stop_requested = False
        self.timed_out = False  # killed by the watchdog for outliving response_timeout
        self.loaded_at: float | None = None  # time.monotonic() when it reported loaded
        self._channel_fds = channel_fds
        self._on_exit = on_exit
        self._env = env
        self._extra_paths = extra_paths or []
        self._process: subprocess.Popen | None = None
        self._pidfd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.loaded: asyncio.Future | None = None
        self.exited: asyncio.Future | None = None
        self.placement = None  # a pyserve.engine.placement.WorkerPlacement once placed
        self._output: list[OutputReader] = []

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def alive(self) -> bool:
        return self.state in (WorkerState.STARTING, WorkerState.READY)

    @property
    def ready(self) -> bool:
        return self.state is WorkerState.READY

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Starts the process; OSError (nothing left running) if it or its pidfd cannot be had."""
        self._loop = loop
        self.loaded = loop.create_future()
        self.exited = loop.create_future()
        command = [
            sys.executable, "-m", "pyserve.worker",
            "--channel", ",".join(map(str, self._channel_fds)),
            "--parent-pid", str(os.getpid()),
        ]
        # The channel's descriptors are the only ones it inherits (close_fds): no worker can
        # reach another's channel. What it prints goes to model_log.log (worker_output).
        stdout, stderr = os.pipe(), os.pipe()
        try:
            self._process = subprocess.Popen(
                command, cwd=self.model_dir, env=worker_environment(self.model_dir, self._extra_paths, self._env),
                stdin=subprocess.DEVNULL, stdout=stdout[1], stderr=stderr[1], pass_fds=self._channel_fds,
            )
        except BaseException:
            for fd in (*stdout, *stderr):
                os.close(fd)
            raise
        os.close(stdout[1])
        os.close(stderr[1])
        self._output = [OutputReader(stdout[0], f"{self.name}-stdout", logging.INFO, loop),
                        OutputReader(stderr[0], f"{self.name}-stderr", logging.WARNING, loop)]
        try:
            self._pidfd = os.pidfd_open(self._process.pid)
            loop.add_reader(self._pidfd, self._reap)
        except OSError:
            self._process.kill()
            self._process.wait()
            self._close_output()
            if self._pidfd is not None:
                os.close(self._pidfd)
            raise

    def mark_loaded(self) -> None:
        self.loaded_at = time.monotonic()
        if self.state is WorkerState.STARTING:
            self.state = WorkerState.READY
        if not self.loaded.done():
            self.loaded.set_result(True)

    def mark_load_failed(self, message: str) -> None:
        """`loaded` is settled when the process has exited: its exit code says why it failed."""
        self.load_error = message
        if self.state in (WorkerState.STARTING, WorkerState.STOPPED):
            self.state = WorkerState.FAILED

    def stop(self) -> None:
        """The engine already asked the worker to finish and exit; this only records it."""
        self.stop_requested = True
        if self.alive:
            self.state = WorkerState.UNLOADING

    def kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            try:
                self._process.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _reap(self) -> None:
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        self.exit_code = self._process.wait()
        self._close_output()
        if self.state is not WorkerState.FAILED:
            self.state = WorkerState.STOPPED
        if not self.loaded.done():
            self.loaded.set_result(False)
        self._on_exit(self)
        self.exited.set_result(self.exit_code)

    def _close_output(self) -> None:
        for reader in self._output:
            reader.close()
        self._output = []

    def memory_usage(self) -> int:
        """Resident set size in bytes, as TorchServe's describe reports it; 0 once gone."""
        if self.exit_code is not None:
            return 0  # its pid may be another process's by now
        try:
            with open(f"/proc/{self.pid}/statm") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError, TypeError):
            return 0
