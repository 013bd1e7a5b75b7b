"""The pid file of `pyserve start`: one per user, mode 0600, and trusted only when it names
a live pyserve server of this user, so that `pyserve stop` never signals anything else."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys

import pytest

from helpers import pid_alive, wait_until
from pyserve.control import PID_FILE_NAME, write_loopback_config


def pyserve(*args: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "pyserve", *args],
                          env=dict(os.environ, TMPDIR=str(tmp_path)), cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)


def start(model_store, tmp_path) -> subprocess.CompletedProcess:
    config = tmp_path / "config.properties"
    write_loopback_config(config)
    return pyserve("start", "--model-store", str(model_store), "--ts-config", str(config),
                   tmp_path=tmp_path)


@pytest.fixture
def bystander():
    """A process of this user that is no pyserve server."""
    process = subprocess.Popen(["sleep", "600"])
    yield process
    process.kill()
    process.wait()


def test_the_pid_file_is_named_after_the_user_and_readable_only_by_them(model_store, tmp_path):
    assert start(model_store, tmp_path).returncode == 0
    try:
        path = tmp_path / f".pyserve-{os.getuid()}.pid"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert pid_alive(int(path.read_text()))
    finally:
        assert "stopped" in pyserve("stop", tmp_path=tmp_path).stdout


def test_stop_never_signals_a_process_that_is_not_a_pyserve_server(bystander, tmp_path):
    (tmp_path / PID_FILE_NAME).write_text(f"{bystander.pid}\n")
    stopped = pyserve("stop", tmp_path=tmp_path)
    assert "not currently running" in stopped.stdout
    assert bystander.poll() is None
    assert not (tmp_path / PID_FILE_NAME).exists()  # it named no server: stale


def test_a_pid_file_naming_another_process_does_not_block_a_start(model_store, bystander, tmp_path):
    (tmp_path / PID_FILE_NAME).write_text(f"{bystander.pid}\n")
    started = start(model_store, tmp_path)
    try:
        assert started.returncode == 0, started.stderr
        assert int((tmp_path / PID_FILE_NAME).read_text()) != bystander.pid
    finally:
        pyserve("stop", tmp_path=tmp_path)


@pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")
def test_a_pid_file_owned_by_another_user_is_not_trusted(model_store, tmp_path):
    # In a shared /tmp another user can make a file under this user's pid file name.
    assert start(model_store, tmp_path).returncode == 0
    path = tmp_path / PID_FILE_NAME
    server = int(path.read_text())
    try:
        os.chown(path, 65534, 65534)
        assert "not currently running" in pyserve("stop", tmp_path=tmp_path).stdout
        assert pid_alive(server)
    finally:
        os.kill(server, signal.SIGTERM)
        wait_until(lambda: not pid_alive(server))
