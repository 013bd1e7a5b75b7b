"""Stopping leaves nothing behind: in-flight requests finish, workers and segments go."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx

from helpers import child_pids, pid_alive, segments_of, start_server, wait_until


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


def mkdir(path: Path) -> Path:
    path.mkdir()
    return path


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
    assert not segments_of(server.process.pid)


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
    assert not segments_of(server.process.pid)


def test_workers_exit_when_the_server_is_killed(hazards_store, tmp_path):
    server = start_server(tmp_path, hazards_store, ["hazards=hazards.mar"], default_workers_per_model=2)
    workers = child_pids(server.process.pid)
    assert len(workers) == 2
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    wait_until(lambda: not [pid for pid in workers if pid_alive(pid)], timeout=10)
    leftovers = segments_of(server.process.pid)
    assert leftovers  # SIGKILL gave the server no chance to clean up...
    for name in leftovers:  # ...so the next test's leak check would see them, unless removed
        os.unlink(f"/dev/shm/{name}")


def test_the_next_start_removes_segments_of_a_killed_server(hazards_store, tmp_path):
    killed = start_server(mkdir(tmp_path / "first"), hazards_store, ["hazards=hazards.mar"],
                          default_workers_per_model=1)
    killed.process.send_signal(signal.SIGKILL)
    killed.process.wait()
    assert segments_of(killed.process.pid)
    successor = start_server(mkdir(tmp_path / "second"), hazards_store, ["hazards=hazards.mar"],
                             default_workers_per_model=1)
    try:
        assert not segments_of(killed.process.pid)
    finally:
        successor.stop()
    assert not segments_of(successor.process.pid)


def test_segments_of_a_live_server_are_left_alone(hazards_store, tmp_path):
    running = start_server(mkdir(tmp_path / "first"), hazards_store, ["hazards=hazards.mar"],
                           default_workers_per_model=1)
    try:
        mine = segments_of(running.process.pid)
        other = start_server(mkdir(tmp_path / "second"), hazards_store, ["hazards=hazards.mar"],
                             default_workers_per_model=1)
        other.stop()
        assert segments_of(running.process.pid) == mine
    finally:
        running.stop()
