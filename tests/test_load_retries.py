"""A worker whose handler fails to load is retried as TorchServe 0.12 retries it: after 1, 1,
2, 3... s, until it loads or its model's maxRetryTimeoutInSec has passed since it first
failed. A synchronous registration answers at the first failure, 507 when the handler ran
out of memory, and is undone."""

from __future__ import annotations

import time
from itertools import pairwise
from pathlib import Path

import httpx
import pytest

from helpers import (archive_load_attempts, described_workers, pid_alive, start_server,
                     wait_until)


def load_attempts(tmp_path: Path) -> list[float]:
    """When each load attempt began, in order (the files the handler leaves)."""
    return sorted(float(path.read_text() or "0") for path in tmp_path.glob("load-attempt-*"))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("load_retries") / "store"
    archive_load_attempts(store, "flaky", "failFirst: 2\n")
    archive_load_attempts(store, "broken", "failFirst: 1000\n")
    archive_load_attempts(store, "brief", "failFirst: 1000\nmaxRetryTimeoutInSec: 2\n")
    archive_load_attempts(store, "first_fails", "failFirst: 1\nloadSeconds: 30\n")
    archive_load_attempts(store, "oom", "outOfMemory: cpu\n")
    archive_load_attempts(store, "cuda_oom", "outOfMemory: cuda\n")
    return store


@pytest.fixture
def server(store, tmp_path):
    """One server per test: the load attempts it counts are its own."""
    server = start_server(tmp_path, store, [], env={"LOAD_ATTEMPTS": str(tmp_path)},
                          enable_model_api="true")
    yield server
    server.stop()


def register_async(api: httpx.Client, model: str) -> None:
    answer = api.post("/models", params={"url": f"{model}.mar", "synchronous": "false"})
    assert answer.status_code == 202, answer.text


def test_a_handler_that_fails_its_first_loads_is_retried_until_it_loads(server, api, tmp_path):
    register_async(api, "flaky")
    wait_until(lambda: [w["status"] for w in described_workers(api, "flaky")] == ["READY"], timeout=30)
    attempts = load_attempts(tmp_path)
    assert len(attempts) == 3
    gaps = [later - earlier for earlier, later in pairwise(attempts)]
    assert gaps[0] >= 1 and gaps[1] >= 1  # TorchServe's first back-off steps: 1 s, 1 s
    answer = httpx.post(f"{server.inference_url}/predictions/flaky", content=b"x", timeout=60)
    assert (answer.status_code, answer.text) == (200, "loaded")


def test_each_failed_load_logs_its_traceback(server, api):
    register_async(api, "flaky")
    wait_until(lambda: [w["status"] for w in described_workers(api, "flaky")] == ["READY"], timeout=30)
    log = server.log()
    for attempt in (1, 2):
        assert f"RuntimeError: load attempt {attempt} fails" in log
    assert log.count("Traceback (most recent call last)") >= 2


def test_describe_shows_a_worker_between_failed_loads_as_failed_under_one_id(api, tmp_path):
    register_async(api, "broken")
    wait_until(lambda: [w["status"] for w in described_workers(api, "broken")] == ["FAILED"], timeout=30)
    (first,) = described_workers(api, "broken")
    wait_until(lambda: len(load_attempts(tmp_path)) >= 3, timeout=30)
    (later,) = described_workers(api, "broken")
    assert later["id"] == first["id"]
    assert later["pid"] != first["pid"]


def test_retries_stop_once_maxRetryTimeoutInSec_has_passed_since_the_first_failure(
        server, api, tmp_path):
    register_async(api, "brief")
    wait_until(lambda: "it is not restarted again" in server.log(), timeout=30)
    attempts = len(load_attempts(tmp_path))
    assert 2 <= attempts <= 4  # failures at about 0, 1.5 and 3 s; the bound is 2 s
    time.sleep(3)  # the next back-off step would be 2 s
    assert len(load_attempts(tmp_path)) == attempts
    (worker,) = described_workers(api, "brief")
    assert worker["status"] == "FAILED" and not pid_alive(worker["pid"])


def test_a_synchronous_registration_answers_500_at_the_first_failed_load_and_is_undone(
        api, tmp_path):
    started = time.monotonic()
    answer = api.post("/models", params={"url": "first_fails.mar", "initial_workers": 2})
    assert time.monotonic() - started < 15  # the other worker would load in 30 s
    assert answer.status_code == 500
    assert answer.json() == {"code": 500, "type": "InternalServerException",
                             "message": "Failed to start workers for model first_fails version: 1.0"}
    assert api.get("/models/first_fails").status_code == 404
    attempts = len(load_attempts(tmp_path))  # the second worker may have been stopped sooner
    time.sleep(2)  # a retry would have come after 1 s
    assert len(load_attempts(tmp_path)) == attempts


@pytest.mark.parametrize("model", ["oom", "cuda_oom"])
def test_a_registration_whose_handler_runs_out_of_memory_loading_answers_507(api, model):
    answer = api.post("/models", params={"url": f"{model}.mar"})
    assert answer.status_code == 507
    assert answer.json() == {"code": 507, "type": "InternalServerException",
                             "message": f"Failed to start workers for model {model} version: 1.0"}


def test_a_scale_up_whose_worker_runs_out_of_memory_loading_answers_507(api):
    assert api.post("/models", params={"url": "oom.mar", "initial_workers": 0}).status_code == 200
    answer = api.put("/models/oom", params={"min_worker": 1, "synchronous": "true"})
    assert answer.status_code == 507
    assert answer.json() == {"code": 507, "type": "InternalServerException",
                             "message": "Failed to start workers for model oom version: null"}
