"""TorchServe's gRPC management API (management.proto) on pyserve, through a real grpcio
client whose stubs are generated from the .proto files pyserve ships (tests/grpc_stubs.py).

Each call does what the REST management API does and answers with its message (JSON as
TorchServe's Gson writes it); an unset field (0, "") means "not given", as in TorchServe.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import httpx
import pytest

from grpc_stubs import bearer, stubs
from helpers import EXAMPLES, HANDLERS, archive_model, start_server

TIMEOUT = 60
MODEL_API_DISABLED = "Model API disabled\norg.pytorch.serve.archive.model.ModelException"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("grpc-management") / "store"
    for name in ("echo", "alpha", "beta"):
        archive_model(store, name, EXAMPLES / "echo" / "echo_handler.py")
    versions = store.parent / "versions"
    for version in ("1.0", "2.0"):
        archive_model(versions, "multi", HANDLERS / "version_probe.py", version=version)
        (versions / "multi.mar").rename(store / f"multi-{version}.mar")
    return store


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("grpc-management-server"), store,
                          ["echo.mar", "alpha.mar", "beta.mar"], enable_model_api="true",
                          default_workers_per_model=1)
    yield server
    server.stop()


def management_stub(target: str):
    channel = grpc.insecure_channel(target)
    return channel, stubs().management_pb2_grpc.ManagementAPIsServiceStub(channel)


@pytest.fixture(scope="module")
def management(server):
    channel, stub = management_stub(server.grpc_management_target)
    yield stub
    channel.close()


def messages():
    return stubs().management_pb2


def failure(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


def rest_json(server, path: str):
    return httpx.get(f"{server.management_url}{path}", timeout=TIMEOUT).json()


def test_list_models_answers_the_rest_listing_as_torchserve_formats_it(server, management):
    listed = management.ListModels(messages().ListModelsRequest(), timeout=TIMEOUT).msg
    assert json.loads(listed) == rest_json(server, "/models")
    assert listed == json.dumps(rest_json(server, "/models"), indent=2)  # Gson: no final newline


def test_list_models_pages_with_limit_and_next_page_token(management):
    first = json.loads(management.ListModels(messages().ListModelsRequest(limit=2),
                                             timeout=TIMEOUT).msg)
    assert [m["modelName"] for m in first["models"]] == ["alpha", "beta"]
    rest = json.loads(management.ListModels(messages().ListModelsRequest(
        limit=2, next_page_token=int(first["nextPageToken"])), timeout=TIMEOUT).msg)
    assert [m["modelName"] for m in rest["models"]] == ["echo"] and "nextPageToken" not in rest


def test_describe_model_answers_the_rest_description(server, management):
    described = json.loads(management.DescribeModel(
        messages().DescribeModelRequest(model_name="echo"), timeout=TIMEOUT).msg)
    expected = rest_json(server, "/models/echo")
    assert [{**m, "workers": None} for m in described] == [{**m, "workers": None} for m in expected]
    assert [w["id"] for w in described[0]["workers"]] == [w["id"] for w in expected[0]["workers"]]


def test_describe_model_customized_adds_the_handlers_metadata(management):
    described = json.loads(management.DescribeModel(
        messages().DescribeModelRequest(model_name="echo", customized=True), timeout=TIMEOUT).msg)
    assert "customizedMetadata" in described[0]


def test_describe_an_unknown_model_is_not_found_with_torchserves_details(management):
    error = failure(lambda: management.DescribeModel(
        messages().DescribeModelRequest(model_name="nope"), timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == ("Model not found: nope\n"
                               "org.pytorch.serve.archive.model.ModelNotFoundException")


def test_register_model_registers_and_the_model_serves_rest_at_once(server, management):
    answer = management.RegisterModel(messages().RegisterModelRequest(
        url="multi-1.0.mar", initial_workers=1, synchronous=True), timeout=TIMEOUT)
    try:
        assert answer.msg == 'Model "multi" Version: 1.0 registered with 1 initial workers'
        served = httpx.post(f"{server.inference_url}/predictions/multi", content=b"x", timeout=TIMEOUT)
        assert served.status_code == 200
    finally:
        management.UnregisterModel(messages().UnregisterModelRequest(model_name="multi"),
                                   timeout=TIMEOUT)


def test_register_model_is_asynchronous_unless_synchronous_is_set(server, management):
    answer = management.RegisterModel(messages().RegisterModelRequest(
        url="multi-1.0.mar", initial_workers=1), timeout=TIMEOUT)
    try:
        assert answer.msg == "Processing worker updates..."
    finally:
        management.UnregisterModel(messages().UnregisterModelRequest(model_name="multi"),
                                   timeout=TIMEOUT)


def test_register_model_without_a_url_is_invalid(management):
    error = failure(lambda: management.RegisterModel(messages().RegisterModelRequest(),
                                                     timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Parameter url is required.\norg.pytorch.serve.http.BadRequestException"


def test_register_a_registered_model_again_is_aborted(management):
    error = failure(lambda: management.RegisterModel(messages().RegisterModelRequest(
        url="echo.mar", synchronous=True), timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.ABORTED


def test_scale_worker_scales_the_models_workers(server, management):
    answer = management.ScaleWorker(messages().ScaleWorkerRequest(
        model_name="beta", min_worker=2, synchronous=True), timeout=TIMEOUT)
    assert answer.msg == "Workers scaled to 2 for model: beta"
    assert len(rest_json(server, "/models/beta")[0]["workers"]) == 2


def test_scale_worker_without_min_worker_scales_to_one(server, management):
    answer = management.ScaleWorker(messages().ScaleWorkerRequest(model_name="alpha", synchronous=True),
                                    timeout=TIMEOUT)
    assert answer.msg == "Workers scaled to 1 for model: alpha"


def test_scale_worker_is_asynchronous_unless_synchronous_is_set(management):
    answer = management.ScaleWorker(messages().ScaleWorkerRequest(model_name="alpha", min_worker=1),
                                    timeout=TIMEOUT)
    assert answer.msg == "Processing worker updates..."


def test_scale_worker_with_max_below_min_is_invalid(management):
    error = failure(lambda: management.ScaleWorker(messages().ScaleWorkerRequest(
        model_name="echo", min_worker=3, max_worker=2), timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == ("max_worker cannot be less than min_worker.\n"
                               "org.pytorch.serve.http.BadRequestException")


def test_scale_worker_of_an_unknown_model_is_not_found(management):
    error = failure(lambda: management.ScaleWorker(messages().ScaleWorkerRequest(
        model_name="nope", min_worker=1), timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_set_default_changes_what_the_bare_name_serves(server, management):
    for version in ("1.0", "2.0"):
        management.RegisterModel(messages().RegisterModelRequest(
            url=f"multi-{version}.mar", initial_workers=1, synchronous=True), timeout=TIMEOUT)
    try:
        answer = management.SetDefault(messages().SetDefaultRequest(
            model_name="multi", model_version="2.0"), timeout=TIMEOUT)
        assert answer.msg == 'Default version successfully updated for model "multi" to "2.0"'
        served = httpx.post(f"{server.inference_url}/predictions/multi", content=b"x", timeout=TIMEOUT)
        assert served.text == "2.0"
    finally:
        for version in ("1.0", "2.0"):
            management.UnregisterModel(messages().UnregisterModelRequest(
                model_name="multi", model_version=version), timeout=TIMEOUT)


def test_set_default_to_an_unknown_version_is_not_found(management):
    error = failure(lambda: management.SetDefault(messages().SetDefaultRequest(
        model_name="echo", model_version="9"), timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == ("Model version 9 does not exist for model echo\n"
                               "org.pytorch.serve.archive.model.ModelVersionNotFoundException")


def test_unregister_model_unregisters(server, management):
    management.RegisterModel(messages().RegisterModelRequest(
        url="multi-1.0.mar", initial_workers=1, synchronous=True), timeout=TIMEOUT)
    answer = management.UnregisterModel(messages().UnregisterModelRequest(model_name="multi"),
                                        timeout=TIMEOUT)
    assert answer.msg == 'Model "multi" unregistered'
    assert httpx.get(f"{server.management_url}/models/multi", timeout=TIMEOUT).status_code == 404


def test_unregister_model_without_a_name_is_invalid_with_torchserves_message(management):
    error = failure(lambda: management.UnregisterModel(messages().UnregisterModelRequest(),
                                                       timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Parameter url is required.\norg.pytorch.serve.http.BadRequestException"


def test_unregister_an_unknown_model_is_not_found(management):
    error = failure(lambda: management.UnregisterModel(
        messages().UnregisterModelRequest(model_name="nope"), timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.NOT_FOUND


@pytest.fixture(scope="module")
def locked_server(store, tmp_path_factory):
    """Token authorization on, the model API off: TorchServe 0.12's defaults."""
    directory = tmp_path_factory.mktemp("grpc-management-locked")
    server = start_server(directory, store, ["echo.mar"], disable_token_authorization="false")
    server.keys = json.loads((directory / "key_file.json").read_text())
    yield server
    server.stop()


def test_a_call_without_the_management_key_is_permission_denied(locked_server):
    channel, stub = management_stub(locked_server.grpc_management_target)
    with channel:
        for metadata in [(), bearer(locked_server.keys["inference"]["key"])]:
            error = failure(lambda: stub.ListModels(messages().ListModelsRequest(),
                                                    metadata=metadata, timeout=TIMEOUT))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_call_with_the_management_key_is_served(locked_server):
    channel, stub = management_stub(locked_server.grpc_management_target)
    with channel:
        listed = stub.ListModels(messages().ListModelsRequest(), timeout=TIMEOUT,
                                 metadata=bearer(locked_server.keys["management"]["key"]))
    assert json.loads(listed.msg)["models"][0]["modelName"] == "echo"


@pytest.mark.parametrize("call", ["RegisterModel", "UnregisterModel"])
def test_register_and_unregister_are_permission_denied_without_the_model_api(locked_server, call):
    channel, stub = management_stub(locked_server.grpc_management_target)
    message = (messages().RegisterModelRequest(url="alpha.mar") if call == "RegisterModel"
               else messages().UnregisterModelRequest(model_name="echo"))
    with channel:
        error = failure(lambda: getattr(stub, call)(
            message, timeout=TIMEOUT, metadata=bearer(locked_server.keys["management"]["key"])))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == MODEL_API_DISABLED
