"""A synchronous scale-down answers once the workers it removed are gone, as TorchServe's does."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from helpers import EXAMPLES, HANDLERS, archive_model, pid_alive, start_server


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("scale_down")
    archive_model(store, "echo", EXAMPLES / "echo" / "echo_handler.py")
    config = store / "slow-config.yaml"
    config.write_text("loadSeconds: 30\n")
    archive_model(store, "slow", HANDLERS / "load_attempts.py", extra=["--config-file", str(config)])
    return store


@pytest.fixture
def server(store, tmp_path):
    server = start_server(tmp_path, store, ["echo=echo.mar"], env={"LOAD_ATTEMPTS": str(tmp_path)},
                          enable_model_api="true", default_workers_per_model=3)
    yield server
    server.stop()


def test_a_synchronous_scale_down_answers_once_the_removed_workers_are_gone(api):
    before = api.get("/models/echo").json()[0]["workers"]
    assert [w["status"] for w in before] == ["READY"] * 3
    answer = api.put("/models/echo", params={"min_worker": 1, "synchronous": "true"})
    assert (answer.status_code, answer.json()) == (200, {"status": "Workers scaled to 1 for model: echo"})
    after = api.get("/models/echo").json()[0]["workers"]
    assert [w["status"] for w in after] == ["READY"]
    removed = {w["pid"] for w in before} - {w["pid"] for w in after}
    assert len(removed) == 2 and not any(pid_alive(pid) for pid in removed)


def test_scaling_down_a_worker_that_is_still_loading_stops_it_at_once(api):
    registered = api.post("/models", params={"url": "slow.mar", "initial_workers": 1,
                                             "synchronous": "false"})
    assert registered.status_code == 202
    (loading,) = api.get("/models/slow").json()[0]["workers"]
    started = time.monotonic()
    answer = api.put("/models/slow", params={"min_worker": 0, "synchronous": "true"})
    assert answer.status_code == 200
    assert time.monotonic() - started < 5  # its load would take 30 s
    assert api.get("/models/slow").json()[0]["workers"] == []
    assert not pid_alive(loading["pid"])
