"""Stopping leaves nothing behind: in-flight requests finish, workers go."""

from __future__ import annotations

import signal
import threading
import time

import httpx

from helpers import child_pids, pid_alive, start_server, wait_until


def predict_later(server, body: bytes, answers: list) -> threading.Thread:
    def run() -> None:
        try:
            answers.append(httpx.post(f"{server.inference_url}/predictions/hazards", content=body,
                                      timeout=60))
        except httpx.HTTPError as error:
            answers.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_sigterm_lets_in_flight_requests_finish(hazards_store, tmp_path):
    server = start_server(tmp_path, hazards_store, ["hazards=hazards.mar"], default_workers_per_model=1)
    workers = child_pids(server.process.pid)
    answers: list = []
    thread = predict_later(server, b"sleep:1", answers)
    time.sleep(0.3)
    assert server.stop() == 0
    thread.join()
    assert answers[0].status_code == 200 and answers[0].content == b"sleep:1"
    assert not [pid for pid in workers if pid_alive(pid)]


def test_sigterm_waits_no_longer_than_graceful_shutdown_timeout(hazards_store, tmp_path):
    server = start_server(tmp_path, hazards_store, ["hazards=hazards.mar"], default_workers_per_model=1,
                          graceful_shutdown_timeout=1)
    workers = child_pids(server.process.pid)
    answers: list = []
    thread = predict_later(server, b"sleep:120", answers)
    time.sleep(0.3)
    assert server.stop(timeout=60) == 0  # well before the handler's 120 s
    thread.join()
    assert not isinstance(answers[0], httpx.Response) or answers[0].status_code != 200
    wait_until(lambda: not [pid for pid in workers if pid_alive(pid)])


def test_workers_exit_when_the_server_is_killed(hazards_store, tmp_path):
    server = start_server(tmp_path, hazards_store, ["hazards=hazards.mar"], default_workers_per_model=2)
    workers = child_pids(server.process.pid)
    assert len(workers) == 2
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    wait_until(lambda: not [pid for pid in workers if pid_alive(pid)], timeout=10)
