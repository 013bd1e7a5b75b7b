"""End to end: an archive made by torch-model-archiver, served by `pyserve start`, over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pyserve.control import PID_FILE_NAME, listening_ports, write_loopback_config

from helpers import (
    HANDLERS,
    archive_model,
    child_pids,
    pid_alive,
    start_server,
)


@pytest.fixture
def client(echo_server):
    with httpx.Client(base_url=echo_server.inference_url, timeout=30) as client:
        yield client


@pytest.mark.parametrize(
    "body",
    [b"", b"x", os.urandom(1024 * 1024)],
    ids=["empty", "one-byte", "one-mebibyte"],
)
def test_echo_answers_a_raw_body_byte_for_byte(client, body):
    response = client.post("/predictions/echo", content=body,
                           headers={"content-type": "application/octet-stream"})
    assert response.status_code == 200
    assert response.content == body


def test_echo_answers_json_as_torchserve_encodes_it(client):
    document = {"instances": [[1, 2.5], {"name": "ü"}], "ok": True}
    response = client.post("/predictions/echo", json=document)
    assert response.status_code == 200
    assert response.content == json.dumps(document, indent=2).encode()


def test_echo_answers_text_as_utf8(client):
    response = client.post("/predictions/echo", content="grüße".encode(),
                           headers={"content-type": "text/plain; charset=utf-8"})
    assert response.content == "grüße".encode()


def test_a_versioned_path_reaches_the_same_model(client):
    assert client.put("/predictions/echo/1.0", content=b"v").content == b"v"


def test_ping_reports_healthy(client):
    response = client.get("/ping")
    assert response.status_code == 200
    assert response.json() == {"status": "Healthy"}


def test_an_unknown_model_is_404_with_torchserve_body(client):
    response = client.post("/predictions/nope", content=b"x")
    assert response.status_code == 404
    assert response.json() == {
        "code": 404, "type": "ModelNotFoundException", "message": "Model not found: nope",
    }


def test_an_unknown_version_is_404(client):
    response = client.post("/predictions/echo/9.9", content=b"x")
    assert response.status_code == 404
    assert response.json()["message"] == "Model version: 9.9 does not exist for model: echo"


def test_the_frontend_never_imports_torch(echo_server):
    with open(f"/proc/{echo_server.process.pid}/maps") as maps:
        assert "libtorch" not in maps.read()


def test_the_handler_is_initialised_once_with_none_then_called_per_batch(tmp_path):
    store = tmp_path / "store"
    archive_model(store, "probe", HANDLERS / "init_probe.py")
    server = start_server(tmp_path, store, ["probe=probe.mar"], default_workers_per_model=1)
    try:
        with httpx.Client(base_url=server.inference_url, timeout=30) as client:
            first = client.post("/predictions/probe", content=b"a").json()
            second = client.post("/predictions/probe", content=b"b").json()
    finally:
        server.stop()
    assert first["calls"] == [None, 1]
    assert second["calls"] == [None, 1, 1]


def pyserve(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "pyserve", *args], env=env, cwd=env["TMPDIR"],
                          capture_output=True, text=True, timeout=180)


def background(tmp_path, **config) -> tuple[Path, dict]:
    """A config on loopback port 0 for `pyserve start`, and an env whose TMPDIR (where the pid
    file goes) is this test's own."""
    path = tmp_path / "config.properties"
    write_loopback_config(path, **config)
    return path, dict(os.environ, TMPDIR=str(tmp_path))


def test_pyserve_start_serves_in_the_background_and_stop_leaves_nothing(model_store, tmp_path):
    config, env = background(tmp_path)
    started = pyserve("start", "--model-store", str(model_store), "--models", "echo=echo.mar",
                      "--ts-config", str(config), env=env)
    assert started.returncode == 0, started.stderr
    port = listening_ports(started.stdout)["inference"]
    server_pid = int((tmp_path / PID_FILE_NAME).read_text())
    workers = child_pids(server_pid)
    try:
        reply = httpx.post(f"http://127.0.0.1:{port}/predictions/echo", content=b"bg", timeout=30)
        assert reply.content == b"bg"
        assert len(workers) >= 1
    finally:
        stopped = pyserve("stop", env=env)
    assert stopped.returncode == 0
    assert "stopped" in stopped.stdout
    assert not any(pid_alive(pid) for pid in {server_pid, *workers})
    assert not (tmp_path / PID_FILE_NAME).exists()


def test_a_second_start_is_refused_while_one_runs(model_store, tmp_path):
    config, env = background(tmp_path)
    assert pyserve("start", "--model-store", str(model_store), "--ts-config", str(config),
                   env=env).returncode == 0
    try:
        again = pyserve("start", "--model-store", str(model_store), "--ts-config", str(config),
                        env=env)
    finally:
        pyserve("stop", env=env)
    assert again.returncode == 1
    assert "already running" in again.stderr


def test_stop_without_a_server_says_so(tmp_path):
    stopped = pyserve("stop", env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert stopped.returncode == 0
    assert "not currently running" in stopped.stdout


def test_a_busy_port_is_reported_clearly(model_store, tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config, env = background(tmp_path, inference_address=f"http://127.0.0.1:{port}")
        started = pyserve("start", "--model-store", str(model_store), "--ts-config", str(config),
                          env=env)
    assert started.returncode != 0
    assert f"cannot listen on http://127.0.0.1:{port}" in started.stderr
