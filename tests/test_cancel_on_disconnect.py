"""Work nobody waits for is not done: a request whose client hangs up (HTTP connection closed,
gRPC call cancelled) before it is dispatched leaves the queue and never runs; one whose batch
already runs has its answer dropped. The handler here writes each call down, so the tests
count what ran; a request named "hold" runs until the test lets it go, keeping the one worker
busy while the others queue behind it."""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path

import grpc
import httpx
import pytest

from grpc_stubs import stubs
from helpers import archive_model, start_server, wait_until

HANDLER = '''
import os
import time

CALLS = {calls!r}
GO = {go!r}


def handle(data, context):
    if data is None:
        return None
    answers = []
    for row in data:
        body = row.get("body") or row.get("data")
        text = body.decode() if isinstance(body, (bytes, bytearray)) else str(body)
        with open(CALLS, "a") as calls:
            calls.write(text + "\\n")
        if text == "hold":
            while not os.path.exists(GO):
                time.sleep(0.01)
        answers.append(text)
    return answers
'''


class Held:
    """One worker, batches of one, a handler that holds "hold" until `release()`."""

    def __init__(self, tmp_path: Path, model_config: str = "", **config):
        self.calls = tmp_path / "calls.txt"
        self.go = tmp_path / "go"
        handler = tmp_path / "held.py"
        handler.write_text(HANDLER.format(calls=str(self.calls), go=str(self.go)))
        yaml = tmp_path / "model-config.yaml"
        yaml.write_text("batchSize: 1\nminWorkers: 1\nmaxWorkers: 1\n" + model_config)
        archive_model(tmp_path / "store", "held", handler, extra=["--config-file", str(yaml)])
        self.server = start_server(tmp_path, tmp_path / "store", ["held.mar"],
                                   job_queue_size=200, **config)
        self.port = self.server.inference_port
        self.url = f"{self.server.inference_url}/predictions/held"
        self.held: list[httpx.Response] = []
        self._holder = threading.Thread(target=lambda: self.held.append(
            httpx.post(self.url, content=b"hold", headers={"Content-Type": "text/plain"},
                       timeout=60)))

    def hold_the_worker(self) -> None:
        self._holder.start()
        wait_until(lambda: self.ran() == ["hold"], timeout=30)

    def release(self) -> None:
        self.go.touch()
        if self._holder.is_alive():
            self._holder.join(timeout=60)

    def ran(self) -> list[str]:
        return self.calls.read_text().split() if self.calls.exists() else []

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.server.metrics_url}/metrics", timeout=30).text
        for line in text.splitlines():
            if line.startswith(name + "{"):
                found = dict(re.findall(r'(\w+)="([^"]*)"', line))
                if all(found.get(key) == wanted for key, wanted in labels.items()):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    def arrivals(self) -> float:
        return self.metric("pyserve_queue_depth_count", model_name="held")

    def hung_up(self) -> float:
        return self.metric("pyserve_requests_hung_up_total", model_name="held")

    def withdrawn(self, reason: str = "client_gone") -> float:
        return self.metric("pyserve_requests_withdrawn_total", model_name="held", reason=reason)

    def dropped(self) -> float:
        return self.metric("pyserve_answers_dropped_total", model_name="held")

    def stop(self) -> None:
        self.go.touch()
        self.server.stop()


@pytest.fixture
def start_held(tmp_path):
    started: list[Held] = []

    def start(model_config: str = "", **config) -> Held:
        started.append(Held(tmp_path, model_config, **config))
        return started[-1]

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def raw_prediction(port: int, name: str) -> socket.socket:
    """A prediction sent on its own connection; its answer is not read yet."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=60)
    connection.sendall(b"POST /predictions/held HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(name), name.encode()))
    return connection


def answer_of(connection: socket.socket) -> tuple[int, bytes]:
    """The status and body of the one answer on `connection` (Content-Length framed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))
    while len(body) < length:
        body += connection.recv(65536)
    return int(head.split()[1]), body


def test_of_50_queued_requests_whose_40_clients_hung_up_only_10_run(start_held):
    held = start_held()
    held.hold_the_worker()
    connections = {f"r{n}": raw_prediction(held.port, f"r{n}") for n in range(50)}
    wait_until(lambda: held.arrivals() == 51, timeout=30)
    gone = [f"r{n}" for n in range(50) if n % 5]  # 40 hang up, 10 stay
    for name in gone:
        connections.pop(name).close()
    wait_until(lambda: held.hung_up() == 40, timeout=30)
    held.release()
    try:
        answers = {name: answer_of(connection) for name, connection in connections.items()}
    finally:
        for connection in connections.values():
            connection.close()
    assert answers == {name: (200, name.encode()) for name in connections}
    assert held.held[0].status_code == 200
    assert sorted(held.ran()) == sorted(["hold", *connections])
    assert (held.withdrawn(), held.dropped()) == (40, 0)


def test_a_client_that_hangs_up_while_its_request_runs_gets_its_answer_dropped(start_held):
    held = start_held()
    hanging = raw_prediction(held.port, "hold")
    wait_until(lambda: held.ran() == ["hold"], timeout=30)
    hanging.close()
    wait_until(lambda: held.hung_up() == 1, timeout=30)
    held.release()
    after = httpx.post(held.url, content=b"after", headers={"Content-Type": "text/plain"},
                       timeout=60)
    assert (after.status_code, after.text) == (200, "after")
    assert held.ran() == ["hold", "after"]
    assert (held.dropped(), held.withdrawn()) == (1, 0)
    assert "Exception in ASGI application" not in held.server.log()


def test_a_request_queued_past_client_timeout_is_withdrawn_as_a_hung_up_one_is(start_held):
    held = start_held("clientTimeoutInMills: 200\n")
    held.hold_the_worker()
    late = raw_prediction(held.port, "late")
    try:
        wait_until(lambda: held.arrivals() == 2, timeout=30)
        threading.Timer(0.5, held.release).start()  # "late" has waited 200 ms by then
        assert answer_of(late)[0] == 503
    finally:
        late.close()
    assert held.withdrawn("client_timeout") == 1
    assert held.ran() == ["hold"]


def test_cancelled_grpc_calls_never_run(start_held):
    held = start_held()
    held.hold_the_worker()
    pb2, pb2_grpc = stubs().inference_pb2, stubs().inference_pb2_grpc
    with grpc.insecure_channel(held.server.grpc_inference_target) as channel:
        predictions = pb2_grpc.InferenceAPIsServiceStub(channel).Predictions
        calls = {f"g{n}": predictions.future(pb2.PredictionsRequest(
            model_name="held", input={"data": f"g{n}".encode()}), timeout=60) for n in range(5)}
        wait_until(lambda: held.arrivals() == 6, timeout=30)
        for name in ("g0", "g2", "g4"):
            calls.pop(name).cancel()
        wait_until(lambda: held.hung_up() == 3, timeout=30)
        held.release()
        answers = {name: call.result().prediction for name, call in calls.items()}
    assert answers == {"g1": b"g1", "g3": b"g3"}
    assert sorted(held.ran()) == ["g1", "g3", "hold"]
    assert held.withdrawn() == 3


def test_hung_up_requests_never_run_behind_a_frontend_process(start_held):
    held = start_held(frontend_processes=2)
    held.hold_the_worker()
    connections = [raw_prediction(held.port, f"f{n}") for n in range(4)]
    try:
        wait_until(lambda: held.arrivals() == 5, timeout=30)
        for connection in connections[:3]:
            connection.close()
        wait_until(lambda: held.hung_up() == 3, timeout=30)
        held.release()
        assert answer_of(connections[3]) == (200, b"f3")
    finally:
        connections[3].close()
    assert held.ran() == ["hold", "f3"]
    assert held.withdrawn() == 3
