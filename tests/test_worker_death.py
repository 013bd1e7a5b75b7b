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

from helpers import HANDLERS, archive_model, child_pids, pid_alive, start_server, wait_until

CLIENTS = 4
CHAOS_SECONDS = 60
MIN_REQUESTS = 3000
MIN_KILLS = 3
KILL_EVERY_SECONDS = 1.0


@pytest.fixture
def server(hazards_store, tmp_path):
    server = start_server(tmp_path, hazards_store, ["hazards=hazards.mar"], default_workers_per_model=2)
    yield server
    server.stop()


def describe(server, model: str = "hazards") -> dict:
    return httpx.get(f"{server.management_url}/models/{model}", timeout=30).json()[0]


def ready_worker_pids(server, model: str = "hazards") -> list[int]:
    return [w["pid"] for w in describe(server, model)["workers"] if w["status"] == "READY"]


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


def test_no_request_waits_longer_than_response_timeout_for_a_model_without_a_ready_worker(tmp_path):
    store = tmp_path / "store"
    archive_model(store, "slow", HANDLERS / "slow_restart.py")
    server = start_server(tmp_path, store, ["slow=slow.mar"], default_workers_per_model=1,
                          default_response_timeout=3)
    try:
        (worker,) = ready_worker_pids(server, "slow")
        os.kill(worker, signal.SIGKILL)  # its restart takes 30 s to load
        started = time.monotonic()
        reply = httpx.post(f"{server.inference_url}/predictions/slow", content=b"x", timeout=60)
        waited = time.monotonic() - started
        assert reply.status_code == 503 and reply.headers["Retry-After"] == "1"
        assert "no worker ready" in reply.json()["message"]
        assert 3 <= waited < 3 + 3  # response_timeout, then at most the next housekeeping round
    finally:
        server.stop()


def test_poison_requests_do_not_push_restarts_back(hazards_store, tmp_path):
    server = start_server(tmp_path, hazards_store, ["hazards=hazards.mar"], default_workers_per_model=2)
    try:
        with httpx.Client(base_url=server.inference_url, timeout=60) as client:
            for _ in range(6):  # each kills the two workers it runs on, then is answered 500
                assert client.post("/predictions/hazards", content=b"poison").status_code == 500
            answered = time.monotonic()
            wait_until(lambda: client.post("/predictions/hazards", content=b"ok").status_code == 200)
        # Twelve deaths of workers that had served: each restart after a second, none longer.
        assert time.monotonic() - answered < 5
    finally:
        server.stop()


def test_killing_every_worker_of_a_model_every_few_seconds_leaves_no_request_unanswered_or_late(
        hazards_store, tmp_path):
    timeout = 5
    server = start_server(tmp_path, hazards_store, ["hazards=hazards.mar"], default_workers_per_model=2,
                          default_response_timeout=timeout)
    outcomes: list[tuple[int, float]] = []
    stop = threading.Event()

    def load(connection: int) -> None:
        with httpx.Client(base_url=server.inference_url, timeout=60) as client:
            count = 0
            while not stop.is_set():
                body = f"{connection}-{count}".encode()
                started = time.monotonic()
                reply = client.post("/predictions/hazards", content=body)
                correct = reply.status_code != 200 or reply.content == body
                outcomes.append((reply.status_code if correct else -1, time.monotonic() - started))
                count += 1

    clients = [threading.Thread(target=load, args=(n,)) for n in range(CLIENTS)]
    for client in clients:
        client.start()
    try:
        deadline = time.monotonic() + CHAOS_SECONDS
        while time.monotonic() < deadline:
            for pid in ready_worker_pids(server):
                os.kill(pid, signal.SIGKILL)
            time.sleep(3)
    finally:
        stop.set()
        for client in clients:
            client.join(90)
        server.stop()
    assert not any(client.is_alive() for client in clients)  # every request was answered
    statuses = {status for status, _ in outcomes}
    assert statuses <= {200, 500, 503}, statuses  # never a wrong answer (-1)
    assert sum(status == 200 for status, _ in outcomes) > len(outcomes) / 2
    # The bound: response_timeout without a worker, the next housekeeping round, a restart.
    assert max(seconds for _, seconds in outcomes) < timeout + 5
