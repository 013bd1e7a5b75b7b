"""KServe v2, the Open Inference Protocol, over REST: tritonclient against a real server whose
handler was written for TorchServe's kservev2 envelope (service_envelope=kservev2)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from helpers import EXAMPLES, HANDLERS, archive_model, start_server

BATCHING = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 4\nmaxBatchDelay: 2000\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("kservev2")
    (home / "model-config.yaml").write_text(BATCHING)
    archive_model(home / "store", "double", HANDLERS / "kservev2_double.py",
                  extra=["--config-file", str(home / "model-config.yaml")])
    server = start_server(home, home / "store", ["double.mar"], service_envelope="kservev2")
    yield server
    server.stop()


@pytest.fixture
def client(server):
    client = triton.InferenceServerClient(f"127.0.0.1:{server.inference_port}")
    yield client
    client.close()


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.inference_url, timeout=60) as http:
        yield http


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    given = triton.InferInput(name, list(array.shape), datatype)
    given.set_data_from_numpy(array, binary_data=binary)
    return given


def inputs(binary: bool) -> list[triton.InferInput]:
    return [tensor("a", np.array([[1, 2], [3, 4]], dtype=np.int32), "INT32", binary),
            tensor("b", np.array([1.5, 2, 3], dtype=np.float32), "FP32", binary),
            tensor("s", np.array([b"hi"], dtype=object), "BYTES", binary)]


def rows_request(sleep: float = 0) -> dict:
    """A request for the "rows" answer (how many rows the handler's call held); `sleep` first."""
    tensors = [{"name": "rows", "shape": [1], "datatype": "INT32", "data": [0]}]
    if sleep:
        tensors.insert(0, {"name": "sleep", "shape": [1], "datatype": "FP64", "data": [sleep]})
    return {"inputs": tensors}


def in_one_batch(http: httpx.Client, posts: list) -> list[httpx.Response]:
    """Runs `posts` (callables) while the worker is busy for a second, so that they queue up and
    leave together as one batch once it is free."""
    answers: dict[int, httpx.Response] = {}
    busy = threading.Thread(target=lambda: answers.setdefault(
        -1, http.post("/v2/models/double/infer", json=rows_request(sleep=1.0))))
    busy.start()
    time.sleep(0.3)
    threads = [threading.Thread(target=lambda i=i, post=post: answers.setdefault(i, post()))
               for i, post in enumerate(posts)]
    for thread in threads:
        thread.start()
    for thread in [busy, *threads]:
        thread.join()
    assert answers[-1].status_code == 200
    return [answers[i] for i in range(len(posts))]


# -- health and metadata --------------------------------------------------------------------

def test_the_server_is_live_and_ready(client):
    assert client.is_server_live()
    assert client.is_server_ready()


def test_server_metadata_names_pyserve_and_the_binary_tensor_data_extension(client):
    metadata = client.get_server_metadata()
    assert metadata["name"] == "pyserve"
    assert "binary_tensor_data" in metadata["extensions"]


def test_a_model_is_ready_at_its_default_and_at_its_named_version(client):
    assert client.is_model_ready("double")
    assert client.is_model_ready("double", "1.0")


def test_model_metadata_names_the_model(client):
    metadata = client.get_model_metadata("double", "1.0")
    assert metadata["name"] == "double"


@pytest.mark.parametrize("path", ["/v2/models/nope/ready", "/v2/models/nope",
                                  "/v2/models/double/versions/9/ready"])
def test_an_unknown_model_or_version_answers_404_with_an_error_object(http, path):
    response = http.get(path)
    assert response.status_code == 404
    assert set(response.json()) == {"error"}


def test_inference_on_an_unknown_model_is_a_404_the_client_reads(client):
    with pytest.raises(InferenceServerException) as raised:
        client.infer("nope", inputs(binary=False))
    assert raised.value.status() == "404"
    assert raised.value.message() == "Model not found: nope"


# -- inference ------------------------------------------------------------------------------

def test_json_tensors_come_back_as_json_outputs_named_after_the_inputs(client):
    requested = [triton.InferRequestedOutput(name, binary_data=False) for name in "abs"]
    result = client.infer("double", inputs(binary=False), outputs=requested)
    assert all("data" in output for output in result.get_response()["outputs"])
    assert result.as_numpy("a").tolist() == [2, 4, 6, 8]  # flattened, as TorchServe answers
    assert result.as_numpy("b").tolist() == [3.0, 4.0, 6.0]
    assert result.as_numpy("s").tolist() == ["HI"]


def test_binary_tensors_come_back_as_binary_outputs(client):
    requested = [triton.InferRequestedOutput(name, binary_data=True) for name in "abs"]
    result = client.infer("double", inputs(binary=True), outputs=requested)
    outputs = result.get_response()["outputs"]
    assert [output["parameters"]["binary_data_size"] for output in outputs] == [16, 12, 6]
    assert result.as_numpy("a").tolist() == [2, 4, 6, 8]
    assert result.as_numpy("b").dtype == np.float32
    assert result.as_numpy("s").tolist() == [b"HI"]


def test_outputs_come_back_binary_when_the_request_names_none(client):
    result = client.infer("double", inputs(binary=False))  # tritonclient: binary_data_output
    assert all("binary_data_size" in output["parameters"]
               for output in result.get_response()["outputs"])
    assert result.as_numpy("b").tolist() == [3.0, 4.0, 6.0]


def test_only_the_requested_outputs_come_back_in_the_order_asked(client):
    requested = [triton.InferRequestedOutput("s", binary_data=False),
                 triton.InferRequestedOutput("a", binary_data=True)]
    result = client.infer("double", inputs(binary=False), outputs=requested)
    assert [output["name"] for output in result.get_response()["outputs"]] == ["s", "a"]
    assert result.as_numpy("a").tolist() == [2, 4, 6, 8]


def test_the_request_id_comes_back(client):
    result = client.infer("double", inputs(binary=True), request_id="request-42")
    assert result.get_response()["id"] == "request-42"


def test_the_response_names_the_model_and_its_version(client):
    response = client.infer("double", inputs(binary=False)).get_response()
    assert (response["model_name"], response["model_version"]) == ("double", "1.0")


def test_a_versioned_path_reaches_that_version(client):
    result = client.infer("double", inputs(binary=True), model_version="1.0")
    assert result.as_numpy("a").tolist() == [2, 4, 6, 8]


def test_asking_for_an_output_the_model_does_not_give_is_a_400(client):
    with pytest.raises(InferenceServerException) as raised:
        client.infer("double", inputs(binary=False),
                     outputs=[triton.InferRequestedOutput("missing")])
    assert raised.value.status() == "400"
    assert "'missing'" in raised.value.message()


def test_a_failing_handler_is_answered_with_an_error_object(http):
    failing = {"inputs": [{"name": "sleep", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
    response = http.post("/v2/models/double/infer", json=failing)
    assert (response.status_code, response.json()) == (503, {"error": "Prediction failed"})


# -- malformed requests ---------------------------------------------------------------------

def _binary(header: dict, data: bytes, length: int | None = None) -> tuple[bytes, dict]:
    encoded = json.dumps(header).encode()
    return encoded + data, {"Inference-Header-Content-Length": str(
        len(encoded) if length is None else length)}


def _fp32(size: int) -> dict:
    return {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32",
                        "parameters": {"binary_data_size": size}}]}


def _bytes_tensor() -> dict:
    return {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES",
                        "parameters": {"binary_data_size": 6}}]}


MALFORMED = {
    "not JSON": (b"{inputs", {}, "not valid JSON"),
    "no inputs": (b'{"id": "1"}', {}, "inputs must be a non-empty list"),
    "shape and data disagree": (
        json.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT32",
                                "data": [1, 2, 3]}]}).encode(), {},
        "input 'x': shape [2, 2] holds 4 elements, data has 3"),
    "unknown datatype": (
        json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "INT128",
                                "data": [1]}]}).encode(), {}, "datatype must be one of"),
    "text in an integer tensor": (
        json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "INT32",
                                "data": [1, "2"]}]}).encode(), {},
        "INT32 data must be integers, got str"),
    "a value out of range": (
        json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8",
                                "data": [256]}]}).encode(), {}, "outside the range of UINT8"),
    "negative dimension": (
        json.dumps({"inputs": [{"name": "x", "shape": [-1], "datatype": "INT32",
                                "data": [1]}]}).encode(), {}, "none negative"),
    "binary size against shape": (*_binary(_fp32(4), b"\0" * 4), "2 FP32 elements take 8"),
    "binary size past the body": (*_binary(_fp32(8), b"\0" * 4), "only 4 bytes of binary data"),
    "binary bytes left over": (*_binary(_fp32(8), b"\0" * 12), "4 bytes of binary data that no"),
    "header length past the body": (*_binary(_fp32(8), b"\0" * 8, length=10_000),
                                    "Inference-Header-Content-Length is '10000'"),
    "BYTES that are not UTF-8": (*_binary(_bytes_tensor(), struct.pack("<I", 2) + b"\xff\xfe"),
                                 "is not UTF-8"),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_a_malformed_request_is_answered_400_saying_what_is_wrong(http, name):
    body, headers, message = MALFORMED[name]
    response = http.post("/v2/models/double/infer", content=body, headers=headers)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_a_body_the_envelope_cannot_read_is_answered_400_on_the_predictions_route(http):
    response = http.post("/predictions/double", json={"instances": [1]})
    assert response.status_code == 400
    assert "Not a KServe v2 inference request" in response.json()["message"]


# -- batches --------------------------------------------------------------------------------

def test_requests_batched_together_each_get_their_own_response(http):
    # TorchServe's envelope reads only a batch's first request: both would be answered 503.
    first, second = in_one_batch(http, [
        lambda: http.post("/v2/models/double/infer", json={"id": "one", **rows_request()}),
        lambda: http.post("/v2/models/double/infer", json={"id": "two", **rows_request()}),
    ])
    assert [first.json()["id"], second.json()["id"]] == ["one", "two"]
    assert first.json()["outputs"][0]["data"] == second.json()["outputs"][0]["data"] == [2]


def test_predictions_and_v2_requests_share_a_batch(http):
    rest, v2 = in_one_batch(http, [
        lambda: http.post("/predictions/double", json=rows_request()),
        lambda: http.post("/v2/models/double/infer", json=rows_request()),
    ])
    assert json.loads(rest.content)["outputs"][0]["data"] == [2]
    assert v2.json()["outputs"][0]["data"] == [2]


# -- without an envelope --------------------------------------------------------------------

def test_without_an_envelope_the_handler_answer_goes_out_as_written(echo_server):
    document = {"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [7]}]}
    response = httpx.post(f"{echo_server.inference_url}/v2/models/echo/infer", json=document)
    assert response.status_code == 200
    assert response.content == json.dumps(document, indent=2).encode()  # echo's own answer


def test_binary_inputs_reach_a_handler_without_an_envelope_as_json_data(echo_server):
    body, headers = _binary(_fp32(8), struct.pack("<2f", 1.5, -2))
    response = httpx.post(f"{echo_server.inference_url}/v2/models/echo/infer", content=body,
                          headers=headers)
    assert response.json()["inputs"][0]["data"] == [1.5, -2.0]


# -- readiness ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def unready_server(tmp_path_factory):
    """Serves `idle` (echo, no workers) and `broken` (wants a worker that cannot load)."""
    home = tmp_path_factory.mktemp("unready")
    archive_model(home / "store", "echo", EXAMPLES / "echo" / "echo_handler.py")
    archive_model(home / "store", "broken", HANDLERS / "broken_handler.py")
    server = start_server(home, home / "store", [], enable_model_api="true")
    management = server.management_url
    assert httpx.post(f"{management}/models", params={
        "url": "echo.mar", "model_name": "idle", "initial_workers": 0}, timeout=60).is_success
    assert httpx.post(f"{management}/models", params={
        "url": "broken.mar", "initial_workers": 0}, timeout=60).is_success
    httpx.put(f"{management}/models/broken", params={"min_worker": 1, "synchronous": "true"},
              timeout=60)
    yield server
    server.stop()


def test_a_model_with_no_worker_is_not_ready(unready_server):
    response = httpx.get(f"{unready_server.inference_url}/v2/models/idle/ready")
    assert (response.status_code, response.json()) == (
        503, {"error": "Model with name idle is not ready."})


def test_the_server_is_not_ready_while_a_model_lacks_its_workers(unready_server):
    response = httpx.get(f"{unready_server.inference_url}/v2/health/ready")
    assert (response.status_code, response.json()) == (503, {"error": "Server is not ready."})


# -- ts imports ------------------------------------------------------------------------------

TS_ENVELOPE = """
import json
from pyserve.compat import install_ts_alias
install_ts_alias()
from ts.context import Context
from ts.torch_handler.request_envelope.kservev2 import KServev2Envelope

context = Context("m", ".", {"model": {"modelName": "m", "modelVersion": "2.0"}}, 1, None, "0.12.0")
envelope = KServev2Envelope(lambda rows, context: [[row["data"][1][0]] for row in rows])
request = {"id": "t", "inputs": [{"name": "x", "shape": [2, 1], "datatype": "INT32",
                                  "data": [5, 6]}]}
print(json.dumps(envelope.handle([{"body": request}], context)))
"""


def test_a_handler_wrapped_in_the_envelope_by_its_ts_name_runs_as_in_torchserve():
    # TorchServe's own tests wrap a handler this way (ts/torch_handler/unit_tests/test_mnist_kf.py).
    ran = subprocess.run([sys.executable, "-c", TS_ENVELOPE], capture_output=True, text=True,
                         check=True)
    assert json.loads(ran.stdout) == [{
        "id": "t", "model_name": "m", "model_version": "2.0",
        "outputs": [{"name": "x", "datatype": "INT64", "data": [6], "shape": [1]}],
    }]
