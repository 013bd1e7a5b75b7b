"""`pyserve start` as scripts written for `torchserve --start` use it: the `Model server
started.` line they wait for, comma-separated model lists, `--start`/`--stop`, and a startup
model that cannot be loaded reported with its cause while the others are served."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from helpers import HANDLERS, archive_model
from pyserve.cli import as_command
from pyserve.config import Settings
from pyserve.control import STARTED, listening_ports, stop_process, write_loopback_config
from pyserve.startup import startup_models

TIMEOUT = 120


def pyserve(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real command, with its pid file in `cwd` (TMPDIR) so that it meets no other server."""
    return subprocess.run([sys.executable, "-P", "-m", "pyserve", *args], cwd=cwd,
                          env=dict(os.environ, TMPDIR=str(cwd)), capture_output=True, text=True,
                          timeout=TIMEOUT)


@pytest.fixture(scope="module")
def store(tmp_path_factory, model_store) -> Path:
    """echo.mar, and broken.mar, whose handler imports a module that is not installed."""
    store = tmp_path_factory.mktemp("habits_store")
    (store / "echo.mar").write_bytes((model_store / "echo.mar").read_bytes())
    no_retries = tmp_path_factory.mktemp("habits_yaml") / "no_retries.yaml"  # no minutes of retries
    no_retries.write_text("maxRetryTimeoutInSec: 0\n")
    archive_model(store, "broken", HANDLERS / "needs_dependency.py",
                  extra=["--config-file", str(no_retries)])
    return store


def config(folder: Path) -> Path:
    path = folder / "config.properties"
    write_loopback_config(path, default_workers_per_model=1)
    return path


@pytest.fixture(scope="module")
def started(tmp_path_factory, store):
    """One background `pyserve start` with a comma list, a space-separated entry, and a model
    whose handler fails to load."""
    folder = tmp_path_factory.mktemp("started")
    result = pyserve("start", "--model-store", str(store), "--ts-config", str(config(folder)),
                     "--models", "echo.mar,second=echo.mar", "broken.mar", cwd=folder)
    yield result, folder
    pyserve("stop", cwd=folder)


def lines_up_to_started(text: str) -> list[str]:
    lines = text.splitlines()
    return lines[:lines.index(STARTED) + 1]


def test_start_prints_model_server_started_once_ready(started):
    result, _ = started
    assert STARTED in result.stdout.splitlines()
    port = listening_ports(result.stdout)["inference"]
    assert httpx.post(f"http://127.0.0.1:{port}/predictions/echo", content=b"hi",
                      timeout=TIMEOUT).content == b"hi"


def test_start_shows_the_server_log_up_to_model_server_started(started):
    result, folder = started
    log = (folder / "logs" / "pyserve.log").read_text()
    assert lines_up_to_started(result.stdout) == lines_up_to_started(log)
    assert "model echo:1.0 is served from echo.mar" in result.stdout


def test_a_comma_separated_models_list_loads_every_model(started):
    result, _ = started
    port = listening_ports(result.stdout)["management"]
    models = httpx.get(f"http://127.0.0.1:{port}/models", timeout=TIMEOUT).json()["models"]
    assert sorted(model["modelName"] for model in models) == ["echo", "second"]


def test_a_startup_model_whose_handler_fails_is_reported_with_the_handlers_error(started):
    result, _ = started
    assert ("warning: cannot load broken.mar: Failed to start workers for model broken version: "
            "1.0: ModuleNotFoundError: No module named 'pyserve_test_dependency'"
            in result.stderr.splitlines())


def test_the_other_startup_models_are_served_and_start_exits_0(started):
    result, _ = started
    assert result.returncode == 0, result.stderr
    port = listening_ports(result.stdout)["inference"]
    assert httpx.post(f"http://127.0.0.1:{port}/predictions/second", content=b"hi",
                      timeout=TIMEOUT).content == b"hi"


def test_start_says_which_models_it_serves(started):
    result, _ = started
    assert "serving: echo 1.0 (1 worker), second 1.0 (1 worker)" in result.stdout.splitlines()


def test_a_foreground_start_prints_model_server_started_when_it_is_ready(store, tmp_path):
    with open(tmp_path / "stderr.log", "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-P", "-m", "pyserve", "start", "--foreground", "--model-store", str(store),
             "--ts-config", str(config(tmp_path)), "--models", "echo.mar"],
            cwd=tmp_path, env=dict(os.environ, TMPDIR=str(tmp_path)), stdout=subprocess.PIPE,
            stderr=stderr)
    try:
        stdout = read_until(process.stdout, STARTED.encode())
        # The log says where it listens, on stdout or stderr.
        logged = stdout.decode() + (tmp_path / "stderr.log").read_text()
        port = re.search(r"listening: inference http://127\.0\.0\.1:(\d+)", logged).group(1)
        assert httpx.post(f"http://127.0.0.1:{port}/predictions/echo", content=b"now",
                          timeout=TIMEOUT).content == b"now"
    finally:
        stop_process(process)
        process.stdout.close()


def read_until(stream, line: bytes) -> bytes:
    """What `stream` gives until a line that is `line`, within TIMEOUT."""
    data = b""
    deadline = time.monotonic() + TIMEOUT
    while line not in data.splitlines():
        assert select.select([stream], [], [], max(deadline - time.monotonic(), 0))[0], data
        chunk = os.read(stream.fileno(), 65536)
        assert chunk, data
        data += chunk
    return data


def test_pyserve_dash_dash_start_and_dash_dash_stop_start_and_stop_a_server(store, tmp_path):
    result = pyserve("--start", "--ncs", "--model-store", str(store), "--ts-config", str(config(tmp_path)),
                     "--models", "echo.mar", cwd=tmp_path)
    stopped = pyserve("--stop", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert STARTED in result.stdout.splitlines()
    assert stopped.stdout == "pyserve has stopped.\n"


def test_dash_dash_start_may_come_after_other_torchserve_flags():
    assert as_command(["--ncs", "--start", "--models", "all"]) == ["start", "--ncs", "--models", "all"]


def test_help_says_that_torchserve_spelling_works(tmp_path):
    assert "pyserve --start" in " ".join(pyserve("--help", cwd=tmp_path).stdout.split())


def test_models_all_is_read_in_any_case_as_torchserve_does(store):
    everything = startup_models(Settings(model_store=str(store), load_models=["all"]))
    assert startup_models(Settings(model_store=str(store), load_models=["ALL"])) == everything
    assert everything == [(None, "broken.mar"), (None, "echo.mar")]
