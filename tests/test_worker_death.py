"""Workers that die are noticed at once, their requests re-run once, and none is lost."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from helpers import child_pids, pid_alive, start_server, wait_until

CLIENTS = 4
MIN_REQUESTS = 3000
MIN_KILLS = 3
KILL_EVERY_SECONDS = 1.0


@pytest.fixture
def server(hazards_store, tmp_path):
    server = start_server(tmp_path, hazards_store, ["hazards=hazards.mar"], default_workers_per_model=2)
    yield server
    server.stop()


def describe(server) -> dict:
    return httpx.get(f"{server.management_url}/models/hazards", timeout=30).json()[0]


def ready_worker_pids(server) -> list[int]:
    return [w["pid"] for w in describe(server)["workers"] if w["status"] == "READY"]


def predict(client: httpx.Client, body: bytes) -> httpx.Response:
    return client.post("/predictions/hazards", content=body,
                       headers={"Content-Type": "application/octet-stream"})


def test_every_request_is_answered_while_workers_are_killed(server):
    """Load runs until both MIN_REQUESTS were sent and MIN_KILLS workers were killed."""
    kills: list[int] = []
    enough = threading.Event()

    def killer() -> None:
        while not enough.wait(KILL_EVERY_SECONDS):
            pids = ready_worker_pids(server)
            if pids:
                victim = random.choice(pids)
                os.kill(victim, signal.SIGKILL)
                kills.append(victim)

    def client_run(index: int) -> list[tuple[bytes, httpx.Response]]:
        answered = []
        with httpx.Client(base_url=server.inference_url, timeout=60) as client:
            while len(answered) < MIN_REQUESTS // CLIENTS or len(kills) < MIN_KILLS:
                body = f"{index}-{len(answered)}".encode()
                answered.append((body, predict(client, body)))
        return answered

    killing = threading.Thread(target=killer)
    killing.start()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = [pair for run in pool.map(client_run, range(CLIENTS)) for pair in run]
    finally:
        enough.set()
        killing.join()
    assert len(answers) >= MIN_REQUESTS
    wrong = [(body, r.status_code, r.content[:200]) for body, r in answers
             if r.status_code != 200 or r.content != body]
    assert not wrong, wrong[:5]
    assert describe(server)["restarts"] >= MIN_KILLS


def test_a_request_that_kills_two_workers_gets_a_clear_error(server):
    with httpx.Client(base_url=server.inference_url, timeout=60) as client:
        answer = predict(client, b"poison")
        assert answer.status_code == 500
        assert answer.json()["type"] == "InternalServerException"
        assert "retried" in answer.json()["message"]
        wait_until(lambda: len(ready_worker_pids(server)) == 2)
        assert predict(client, b"still here").content == b"still here"


def test_a_dead_worker_is_noticed_at_once_and_restarted(server):
    victim = ready_worker_pids(server)[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: describe(server)["restarts"] == 1, timeout=10)
    wait_until(lambda: len(ready_worker_pids(server)) == 2)
    assert victim not in ready_worker_pids(server)


def test_requests_wait_for_a_worker_that_is_restarting(hazards_store, tmp_path):
    server = start_server(tmp_path, hazards_store, ["hazards=hazards.mar"],
                          default_workers_per_model=1)
    try:
        (victim,) = ready_worker_pids(server)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: describe(server)["restarts"] == 1)
        with httpx.Client(base_url=server.inference_url, timeout=60) as client:
            answer = predict(client, b"queued while no worker was alive")
        assert answer.status_code == 200
        assert answer.content == b"queued while no worker was alive"
    finally:
        server.stop()


def test_restarts_back_off_when_workers_keep_dying(hazards_store, tmp_path):
    server = start_server(tmp_path, hazards_store, ["hazards=hazards.mar"], default_workers_per_model=1)
    try:
        gaps = []
        for _ in range(4):
            (victim,) = ready_worker_pids(server)
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            wait_until(lambda: ready_worker_pids(server) not in ([], [victim]))
            gaps.append(time.monotonic() - killed)
        # Fibonacci back-off 1, 1, 2, 3 s: a delay is a lower bound, whatever the machine's load.
        assert [gap >= floor for gap, floor in zip(gaps, (1, 1, 2, 3))] == [True] * 4
        assert describe(server)["restarts"] == 4
    finally:
        server.stop()


def test_no_worker_outlives_the_server(server):
    workers = child_pids(server.process.pid)
    assert workers
    server.stop()
    assert not [pid for pid in workers if pid_alive(pid)]
