"""startup_timeout holds for every worker, however it was started (an asynchronous
registration, a scale-up, a restart): one that has not loaded by then is killed, and its load
counts as failed, so it is retried as any failed load is (tests/test_load_retries.py)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from helpers import (archive_load_attempts, described_workers, pid_alive, start_server,
                     wait_until)

TIMED_OUT = "did not load within startup_timeout=2 s"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("startup_timeout") / "store"
    archive_load_attempts(store, "slow", "startupTimeout: 2\nloadSeconds: 30\nmaxRetryTimeoutInSec: 0\n")
    archive_load_attempts(store, "slow_retried", "startupTimeout: 2\nloadSeconds: 30\n")
    archive_load_attempts(store, "slow_restart", "startupTimeout: 2\nloadSeconds: 30\nfastFirst: 1\n")
    return store


@pytest.fixture
def server(store, tmp_path):
    server = start_server(tmp_path, store, [], env={"LOAD_ATTEMPTS": str(tmp_path)},
                          enable_model_api="true")
    yield server
    server.stop()


def wait_for_failed_worker(api: httpx.Client, model: str) -> dict:
    wait_until(lambda: [w["status"] for w in described_workers(api, model)] == ["FAILED"], timeout=30)
    return described_workers(api, model)[0]


def test_an_asynchronous_registration_kills_a_worker_not_loaded_within_startup_timeout(
        server, api):
    started = time.monotonic()
    answer = api.post("/models", params={"url": "slow.mar", "synchronous": "false"})
    assert answer.status_code == 202
    worker = wait_for_failed_worker(api, "slow")
    assert 2 <= time.monotonic() - started < 15  # not the 30 s the handler takes
    assert not pid_alive(worker["pid"])
    assert TIMED_OUT in server.log()


def test_a_scale_up_kills_a_worker_not_loaded_within_startup_timeout(server, api):
    assert api.post("/models", params={"url": "slow.mar", "initial_workers": 0}).status_code == 200
    started = time.monotonic()
    assert api.put("/models/slow", params={"min_worker": 1}).status_code == 202
    worker = wait_for_failed_worker(api, "slow")
    assert 2 <= time.monotonic() - started < 15
    assert not pid_alive(worker["pid"])


def test_a_restarted_worker_not_loaded_within_startup_timeout_is_killed(server, api):
    assert api.post("/models", params={"url": "slow_restart.mar"}).status_code == 200
    (first,) = described_workers(api, "slow_restart")  # its first load was quick
    os.kill(first["pid"], signal.SIGKILL)
    wait_until(lambda: TIMED_OUT in server.log(), timeout=30)  # its restart would take 30 s


def test_a_worker_killed_for_its_startup_timeout_is_retried(server, api, tmp_path):
    assert api.post("/models", params={"url": "slow_retried.mar", "synchronous": "false"}
                    ).status_code == 202
    wait_until(lambda: server.log().count(TIMED_OUT) >= 2, timeout=30)
    assert len(list(tmp_path.glob("load-attempt-*"))) >= 2
