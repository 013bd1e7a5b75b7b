"""Handlers stream with TorchServe's send_intermediate_predict_response: each part reaches
the client as an HTTP chunk as soon as it is sent, the return value last."""

from __future__ import annotations

import socket
import time

import grpc
import httpx
import pytest

from grpc_stubs import stubs
from helpers import HANDLERS, archive_model, start_server, wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("streaming")
    archive_model(tmp_path / "store", "stream", HANDLERS / "streaming.py")
    server = start_server(tmp_path, tmp_path / "store", ["stream.mar"])
    yield server
    server.stop()


def chunks(server, body: bytes) -> tuple[httpx.Headers, list[tuple[float, bytes]]]:
    started = time.monotonic()
    with httpx.stream("POST", f"{server.inference_url}/predictions/stream", content=body,
                      timeout=30) as response:
        assert response.status_code == 200
        return response.headers, [(time.monotonic() - started, chunk)
                                  for chunk in response.iter_raw()]


def test_each_intermediate_answer_reaches_the_client_as_a_chunk_and_the_return_value_last(server):
    """TorchServe's test_send_intermediate_prediction_response: 4 chunks."""
    headers, received = chunks(server, b"42")
    assert headers["transfer-encoding"] == "chunked"
    assert [chunk for _, chunk in received] == [b"hello", b"hello", b"hello", b"hello world "]


def test_the_first_chunk_arrives_before_the_handler_finishes(server):
    _, received = chunks(server, b"slow")  # the handler runs for 3 s
    first, last = received[0][0], received[-1][0]
    assert last - first > 2.5
    assert first < 1.0


def test_a_client_that_hangs_up_mid_stream_does_not_wedge_the_worker(server):
    with socket.create_connection(("127.0.0.1", server.inference_port)) as client:
        client.sendall(b"POST /predictions/stream HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Length: 4\r\n\r\nslow")
        assert b"200" in client.recv(4096)  # the head and the first chunk
    _, received = chunks(server, b"42")  # the worker finished the other stream and serves this
    assert received[-1][1] == b"hello world "


def counted(server, name: str) -> float:
    text = httpx.get(f"{server.metrics_url}/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith(name + "{") and 'model_name="stream"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_client_that_hangs_up_mid_stream_has_the_rest_of_its_answer_dropped(server):
    hung_up = counted(server, "pyserve_requests_hung_up_total")
    dropped = counted(server, "pyserve_answers_dropped_total")
    with socket.create_connection(("127.0.0.1", server.inference_port)) as client:
        client.sendall(b"POST /predictions/stream HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Length: 4\r\n\r\nslow")
        assert b"200" in client.recv(4096)
    wait_until(lambda: counted(server, "pyserve_requests_hung_up_total") == hung_up + 1)
    # the handler cannot be stopped: it runs to its end, and its answer goes nowhere
    wait_until(lambda: counted(server, "pyserve_answers_dropped_total") == dropped + 1)


def test_a_grpc_stream_cancelled_mid_way_has_the_rest_of_its_answer_dropped(server):
    pb2, pb2_grpc = stubs().inference_pb2, stubs().inference_pb2_grpc
    hung_up = counted(server, "pyserve_requests_hung_up_total")
    dropped = counted(server, "pyserve_answers_dropped_total")
    with grpc.insecure_channel(server.grpc_inference_target) as channel:
        stream = pb2_grpc.InferenceAPIsServiceStub(channel).StreamPredictions(
            pb2.PredictionsRequest(model_name="stream", input={"body": b"slow"}), timeout=30)
        assert next(stream).prediction == b"hello"
        stream.cancel()
    wait_until(lambda: counted(server, "pyserve_requests_hung_up_total") == hung_up + 1)
    wait_until(lambda: counted(server, "pyserve_answers_dropped_total") == dropped + 1)
