"""KServe's Open Inference Protocol over gRPC (inference.GRPCInferenceService) on the gRPC
inference listener: tritonclient's gRPC client against a real server whose handler was written
for TorchServe's kservev2 envelope (service_envelope=kservev2)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_stubs import PROTOS, protoc_includes, serialized_descriptor
from helpers import HANDLERS, archive_model, start_server, wait_until
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

BATCHING = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 4\nmaxBatchDelay: 2000\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("kserve-grpc")
    (home / "model-config.yaml").write_text(BATCHING)
    archive_model(home / "store", "double", HANDLERS / "kservev2_double.py",
                  extra=["--config-file", str(home / "model-config.yaml")])
    archive_model(home / "store", "idle", HANDLERS / "kservev2_double.py")
    server = start_server(home, home / "store", ["double.mar"], service_envelope="kservev2",
                          enable_model_api="true")
    yield server
    server.stop()


@pytest.fixture
def client(server):
    client = triton.InferenceServerClient(server.grpc_inference_target)
    yield client
    client.close()


@pytest.fixture
def stub(server):
    """tritonclient's own generated stub, for what its client does not send (typed contents)."""
    with grpc.insecure_channel(server.grpc_inference_target) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def tensor(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    given = triton.InferInput(name, list(array.shape), datatype)
    given.set_data_from_numpy(array)
    return given


def failure(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as raised:
        call()
    return raised.value


def test_the_shipped_module_is_generated_from_kserves_proto(tmp_path):
    tree = tmp_path / "pyserve" / "grpc" / "protos"
    tree.mkdir(parents=True)
    shutil.copy(PROTOS / "grpc_predict_v2.proto", tree)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path}",
                    *protoc_includes(), f"--python_out={tmp_path}",
                    "pyserve/grpc/protos/grpc_predict_v2.proto"], check=True)
    assert serialized_descriptor(PROTOS / "grpc_predict_v2_pb2.py") == \
        serialized_descriptor(tree / "grpc_predict_v2_pb2.py")


# -- health and metadata --------------------------------------------------------------------

def test_the_server_is_live_and_ready(client):
    assert client.is_server_live()
    assert client.is_server_ready()


def test_a_model_is_ready_at_its_default_and_at_its_named_version(client):
    assert client.is_model_ready("double")
    assert client.is_model_ready("double", "1.0")


def test_server_metadata_names_pyserve(client):
    assert client.get_server_metadata().name == "pyserve"


def test_model_metadata_names_the_model_and_its_version(client):
    metadata = client.get_model_metadata("double")
    assert (metadata.name, list(metadata.versions)) == ("double", ["1.0"])


def test_readiness_of_an_unknown_model_is_not_found(client):
    assert failure(lambda: client.is_model_ready("nope")).status() == "StatusCode.NOT_FOUND"


# -- inference ------------------------------------------------------------------------------

def test_fp32_tensors_round_trip(client):
    array = np.array([[1.5, 2], [3, -4]], dtype=np.float32)
    result = client.infer("double", [tensor("x", array, "FP32")])
    assert result.as_numpy("x").tolist() == [3.0, 4.0, 6.0, -8.0]
    assert result.get_output("x").datatype == "FP32"


def test_int64_tensors_round_trip(client):
    array = np.array([1 << 40, -3], dtype=np.int64)
    result = client.infer("double", [tensor("x", array, "INT64")])
    assert result.as_numpy("x").tolist() == [1 << 41, -6]
    assert result.get_output("x").datatype == "INT64"


def test_raw_inputs_are_answered_with_raw_output_contents(client):
    result = client.infer("double", [tensor("x", np.array([1], dtype=np.int64), "INT64")])
    assert len(result.get_response().raw_output_contents) == 1


def test_typed_contents_are_answered_with_typed_contents(stub):
    request = service_pb2.ModelInferRequest(model_name="double", inputs=[
        service_pb2.ModelInferRequest.InferInputTensor(
            name="x", datatype="INT32", shape=[2],
            contents=service_pb2.InferTensorContents(int_contents=[5, -1]))])
    response = stub.ModelInfer(request)
    assert not response.raw_output_contents
    assert list(response.outputs[0].contents.int_contents) == [10, -2]


def test_the_request_id_is_echoed(client):
    result = client.infer("double", [tensor("x", np.array([1], dtype=np.int64), "INT64")],
                          request_id="req-7")
    assert result.get_response().id == "req-7"


def test_only_the_requested_outputs_are_answered(client):
    result = client.infer("double", [tensor("x", np.array([1], dtype=np.int64), "INT64"),
                                     tensor("y", np.array([2.0], dtype=np.float32), "FP32")],
                          outputs=[triton.InferRequestedOutput("y")])
    assert [output.name for output in result.get_response().outputs] == ["y"]


def test_inference_on_an_unknown_model_is_not_found(client):
    given = [tensor("x", np.array([1], dtype=np.int64), "INT64")]
    error = failure(lambda: client.infer("nope", given))
    assert (error.status(), error.message()) == ("StatusCode.NOT_FOUND", "Model not found: nope")


def test_a_shape_the_data_does_not_fill_is_invalid_argument(client):
    given = tensor("x", np.array([1, 2], dtype=np.int64), "INT64")
    given.set_shape([3])
    error = failure(lambda: client.infer("double", [given]))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "3 INT64 elements" in error.message()


def test_a_model_without_a_worker_is_unavailable(server, client):
    with httpx.Client(base_url=server.management_url, timeout=60) as api:
        assert api.post("/models", params={"url": "idle.mar", "initial_workers": 0}).is_success
        try:
            given = [tensor("x", np.array([1], dtype=np.int64), "INT64")]
            statuses: list[str] = []
            # the gRPC process learns of the model from the server's next snapshot
            wait_until(lambda: statuses.append(failure(lambda: client.infer("idle", given))
                                               .status()) or statuses[-1] != "StatusCode.NOT_FOUND")
            assert statuses[-1] == "StatusCode.UNAVAILABLE"
        finally:
            api.delete("/models/idle")


def test_grpc_and_rest_requests_share_a_batch(server, client):
    """While the worker is busy, a REST and a gRPC request queue up and go as one batch: the
    handler sees two rows in each one's call."""
    rows = {"name": "rows", "shape": [1], "datatype": "INT32", "data": [0]}
    sleep = {"name": "sleep", "shape": [1], "datatype": "FP64", "data": [1.0]}
    answers: dict[str, object] = {}
    with httpx.Client(base_url=server.inference_url, timeout=60) as http:
        def post(key: str, inputs: list) -> None:
            answers[key] = http.post("/v2/models/double/infer", json={"inputs": inputs}).json()

        busy = threading.Thread(target=post, args=("busy", [sleep, rows]))
        busy.start()
        time.sleep(0.3)
        rest = threading.Thread(target=post, args=("rest", [rows]))
        rest.start()
        answer = client.infer("double", [tensor("rows", np.array([0], dtype=np.int32), "INT32")])
        rest.join()
        busy.join()
    assert answer.as_numpy("rows").tolist() == [2]
    assert answers["rest"]["outputs"][0]["data"] == [2]
