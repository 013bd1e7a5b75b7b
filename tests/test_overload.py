"""Overload is answered at once and clearly: full queues, slow handlers, oversized bodies."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from helpers import start_server, wait_until

RESPONSE_LIMIT = 1000


@pytest.fixture(scope="module")
def server(hazards_store, tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("overload"), hazards_store, ["hazards=hazards.mar"],
                          default_workers_per_model=1, default_response_timeout=2, max_response_size=RESPONSE_LIMIT,
                          max_request_size=10_000)
    yield server
    server.stop()


def predict(server, body: bytes, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{server.inference_url}/predictions/hazards", content=body,
                      headers={"Content-Type": "application/octet-stream"}, timeout=timeout)


def describe(server) -> dict:
    return httpx.get(f"{server.management_url}/models/hazards", timeout=30).json()[0]


@pytest.fixture(scope="module")
def small_queue(hazards_store, tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("small_queue"), hazards_store,
                          ["hazards=hazards.mar"], default_workers_per_model=1, job_queue_size=2)
    yield server
    server.stop()


def test_a_full_queue_answers_503_at_once_with_retry_after(small_queue):
    with ThreadPoolExecutor(4) as pool:
        running = pool.submit(predict, small_queue, b"sleep:5")
        time.sleep(0.5)
        # One more waits in the worker's ring, two fill the queue.
        waiting = [pool.submit(predict, small_queue, f"w{n}".encode()) for n in range(3)]
        wait_until(lambda: describe(small_queue)["jobQueueStatus"]["remainingCapacity"] == 0)
        refused = predict(small_queue, b"one too many")
        assert not running.done()  # refused at once, not after the queue moved
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["type"] == "ServiceUnavailableException"
        assert [future.result().status_code for future in [running, *waiting]] == [200] * 4
    assert predict(small_queue, b"queue has room again").status_code == 200


def test_a_batch_over_response_timeout_is_answered_and_its_worker_restarted(server):
    restarts = describe(server)["restarts"]
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(predict, server, b"sleep:60")
        time.sleep(0.2)
        behind = pool.submit(predict, server, b"waiting behind the slow one")
        answer = slow.result()
        assert answer.status_code == 500
        assert "response_timeout=2" in answer.json()["message"]
        assert behind.result().content == b"waiting behind the slow one"  # re-run elsewhere
    assert describe(server)["restarts"] == restarts + 1


def test_a_response_over_max_response_size_is_a_clear_500(server):
    answer = predict(server, f"size:{RESPONSE_LIMIT + 1}".encode())
    assert answer.status_code == 500
    assert f"max_response_size={RESPONSE_LIMIT}" in answer.json()["message"]
    assert predict(server, f"size:{RESPONSE_LIMIT}".encode()).content == b"x" * RESPONSE_LIMIT


def test_a_declared_oversize_body_is_refused_before_it_is_sent(server):
    with socket.create_connection(("127.0.0.1", server.inference_port), timeout=30) as sock:
        sock.sendall(b"POST /predictions/hazards HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 100000000\r\n\r\n" + b"x" * 1000)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")
