"""Stateful sequences through the real server, with TorchServe's own example handlers
(tests/handlers/torchserve_stateful) and the answers TorchServe's tests expect of them."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from helpers import HANDLERS, archive_model, start_server

EXAMPLE = HANDLERS / "torchserve_stateful"
SEQUENCE_BATCHING = """
minWorkers: 2
maxWorkers: 2
batchSize: 4
maxNumSequence: 4
sequenceMaxIdleMSec: 5000
maxSequenceJobQueueSize: 10
sequenceBatching: true
handler:
  cache:
    capacity: 4
"""
CONTINUOUS_BATCHING = """
minWorkers: 2
maxWorkers: 2
batchSize: 1
maxNumSequence: 2
sequenceMaxIdleMSec: 1500
sequenceTimeoutMSec: 60000
maxSequenceJobQueueSize: 10
sequenceBatching: true
continuousBatching: true
handler:
  cache:
    capacity: 4
"""
SEQUENCE_ID = "ts_request_sequence_id"


def archive(tmp_path: Path, name: str, handler: str, yaml: str) -> Path:
    import sys

    sys.path.insert(0, str(EXAMPLE))
    try:
        from model import Net
    finally:
        sys.path.pop(0)
    weights = tmp_path / "model_cnn.pt"
    torch.save(Net().state_dict(), weights)
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml)
    return archive_model(tmp_path / "store", name, EXAMPLE / handler, extra=[
        "--model-file", str(EXAMPLE / "model.py"), "--serialized-file", str(weights),
        "--config-file", str(config)])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("stateful")
    archive(tmp_path, "stateful", "sequence_batching_handler.py", SEQUENCE_BATCHING)
    archive(tmp_path, "continuous", "continuous_batching_handler.py", CONTINUOUS_BATCHING)
    server = start_server(tmp_path, tmp_path / "store", ["stateful.mar", "continuous.mar"])
    yield server
    server.stop()


def post(server, model: str, value, sequence_id: str | None = None, **kwargs) -> httpx.Response:
    headers = {SEQUENCE_ID: sequence_id} if sequence_id else {}
    return httpx.post(f"{server.inference_url}/predictions/{model}", content=str(value).encode(),
                      headers=headers, timeout=30, **kwargs)


def test_each_sequence_keeps_its_own_sum_across_two_workers(server):
    """TorchServe's test_example_stateful_sequence_batching_http: two clients, interleaved."""
    answers: dict[str, str] = {}

    def client(sequence_id: str, offset: int) -> None:
        answers[sequence_id] = " ".join(
            post(server, "stateful", 2 * i + offset + 1, sequence_id).text for i in range(5))

    threads = [threading.Thread(target=client, args=("seq_0", 0)),
               threading.Thread(target=client, args=("seq_1", 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == {"seq_0": "1 4 9 16 25", "seq_1": "2 6 12 20 30"}


def test_a_request_without_a_sequence_id_starts_a_sequence_and_learns_its_id(server):
    first = post(server, "continuous", 2)
    assert first.status_code == 200 and first.text == "2"
    sequence_id = first.headers[SEQUENCE_ID]
    assert sequence_id.startswith("ts-seq-")
    assert post(server, "continuous", 4, sequence_id).text == "6"
    assert post(server, "continuous", 0, sequence_id).text == "6"  # 0 ends it


def test_a_continuous_batching_handler_streams_its_answer_in_chunks(server):
    sequence_id = post(server, "continuous", 2).headers[SEQUENCE_ID]
    started = time.monotonic()
    arrivals = []
    with httpx.stream("POST", f"{server.inference_url}/predictions/continuous",
                      json={"input": 3}, headers={SEQUENCE_ID: sequence_id}, timeout=60) as response:
        assert response.headers["transfer-encoding"] == "chunked"
        for chunk in response.iter_bytes():
            arrivals.append((time.monotonic() - started, chunk.decode()))
    assert [chunk for _, chunk in arrivals] == ["5"] * 11  # the handler's 10 parts, then its last
    assert arrivals[0][0] < arrivals[-1][0] - 5  # the first came long before the handler finished
    post(server, "continuous", 0, sequence_id)


def test_a_cancel_request_stops_a_running_stream_of_its_sequence(server):
    """TorchServe's test_infer_stateful_cancel: -1 ends the stream early; 0 then ends it."""
    for _ in range(3):  # more often than maxNumSequence: ended sequences free their places
        sequence_id = post(server, "continuous", 2).headers[SEQUENCE_ID]
        streamed: list[str] = []

        def stream() -> None:
            with httpx.stream("POST", f"{server.inference_url}/predictions/continuous",
                              json={"input": 3}, headers={SEQUENCE_ID: sequence_id},
                              timeout=60) as response:
                streamed.extend(chunk.decode() for chunk in response.iter_bytes())

        thread = threading.Thread(target=stream)
        thread.start()
        time.sleep(1)
        assert post(server, "continuous", -1, sequence_id).text == "-1"
        thread.join()
        assert streamed[0] == "5" and len(streamed) < 11
        ended = post(server, "continuous", 0, sequence_id)
        assert ended.status_code == 200 and ended.headers["ts_request_sequence_end"] == sequence_id


def test_an_idle_sequence_expires_and_its_id_is_refused(server):
    sequence_id = post(server, "continuous", 2).headers[SEQUENCE_ID]
    time.sleep(2.5)  # past sequenceMaxIdleMSec (1500) and the server's once-a-second sweep
    refused = post(server, "continuous", 2, sequence_id)
    assert refused.status_code == 503
    assert "expired" in refused.json()["message"]


def test_a_new_sequence_past_max_num_sequence_is_refused_with_503(server):
    opened = [post(server, "stateful", 1, f"limit-{i}") for i in range(4)]
    assert all(response.status_code == 200 for response in opened)
    refused = post(server, "stateful", 1, "limit-4")
    assert refused.status_code == 503 and "maxNumSequence" in refused.json()["message"]


def test_describe_shows_the_sequence_settings(server):
    described = httpx.get(f"{server.management_url}/models/continuous").json()[0]
    assert described["stateful"] is True and described["continuousBatching"] is True
    assert (described["sequenceMaxIdleMSec"], described["sequenceTimeoutMSec"],
            described["maxNumSequence"], described["maxSequenceJobQueueSize"]) == (1500, 60000, 2, 10)


def test_a_sequence_spread_over_frontend_processes_keeps_its_sum(tmp_path):
    """Each request on a new connection: the kernel spreads them over both frontends."""
    archive(tmp_path, "stateful", "sequence_batching_handler.py", SEQUENCE_BATCHING)
    server = start_server(tmp_path, tmp_path / "store", ["stateful.mar"], frontend_processes=2)
    try:
        answers = [post(server, "stateful", value, "spread").text for value in range(1, 11)]
        assert answers == [str(sum(range(1, n + 1))) for n in range(1, 11)]
    finally:
        server.stop()
