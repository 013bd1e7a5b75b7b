"""The TorchServe handler contract, through real HTTP: entry points, the data list, Context,
response mapping and error answers. Every archive is made by torch-model-archiver."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest

from helpers import HANDLERS, archive_model, start_server


@pytest.fixture(scope="module")
def contract_store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("contract_store")
    archive_model(store, "function", f"{HANDLERS}/contract_function:predict")
    archive_model(store, "klass", HANDLERS / "contract_class.py")
    archive_model(store, "inputs", HANDLERS / "inputs_probe.py")
    archive_model(store, "responses", HANDLERS / "responses.py")
    archive_model(store, "failures", HANDLERS / "failures.py")
    config = tmp_path_factory.mktemp("yaml") / "model-config.yaml"
    config.write_text("batchSize: 4\nmaxBatchDelay: 50\nminWorkers: 2\nmaxWorkers: 3\n"
                      "responseTimeout: 33\ncustom:\n  answer: 42\n")
    archive_model(store, "yamlprobe", HANDLERS / "yaml_probe.py",
                  extra=["--config-file", str(config)])
    archive_model(store, "tgz_echo", HANDLERS / "failures.py", extra=["--archive-format", "tgz"])
    archive_model(store, "folder_echo", HANDLERS / "failures.py",
                  extra=["--archive-format", "no-archive"])
    return store


@pytest.fixture(scope="module")
def server(contract_store, tmp_path_factory):
    models = ["function=function.mar", "klass=klass.mar", "inputs=inputs.mar",
              "responses=responses.mar", "failures=failures.mar", "yamlprobe=yamlprobe.mar",
              "tgz_echo=tgz_echo.tar.gz", "folder_echo=folder_echo"]
    server = start_server(tmp_path_factory.mktemp("contract"), contract_store, models,
                          default_workers_per_model=1)
    yield server
    server.stop()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.inference_url, timeout=60) as client:
        yield client


def fail(client, how: str, **headers: str) -> httpx.Response:
    return client.post("/predictions/failures", content=b"x", headers={"X-Fail": how, **headers})


# -- entry points ------------------------------------------------------------------------

def test_module_colon_function_names_the_entry_point(client):
    assert client.post("/predictions/function", content=b"x").text == "predict:function"


def test_a_single_class_is_instantiated_and_initialized_before_handling(client):
    assert client.post("/predictions/klass", content=b"x").text == "initialized:True"


def test_a_module_with_two_classes_and_no_handle_does_not_load(tmp_path):
    store = tmp_path / "store"
    archive_model(store, "two", HANDLERS / "two_classes.py")
    server = start_server(tmp_path, store, ["two=two.mar"], default_workers_per_model=1)
    try:
        log = server.log()
    finally:
        server.stop()
    assert "Expected only one class in custom service code or a function entry point" in log
    assert "cannot load two.mar" in log


@pytest.mark.parametrize("model", ["tgz_echo", "folder_echo"])
def test_tgz_and_folder_archives_are_served(client, model):
    response = client.post(f"/predictions/{model}", content=b"x")
    assert response.status_code == 200
    assert response.text.isdigit()  # the worker's pid


# -- the data list -----------------------------------------------------------------------

def probe(client, **kwargs) -> dict:
    response = client.post("/predictions/inputs", **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_raw_body_arrives_as_bytes_under_body(client):
    seen = probe(client, content=b"\x00\xff", headers={"content-type": "application/octet-stream"})
    assert seen["fields"] == {"body": {"type": "bytes", "value": "00ff"}}


def test_a_json_body_arrives_parsed(client):
    seen = probe(client, json={"a": [1, 2]})
    assert seen["fields"] == {"body": {"type": "dict", "value": {"a": [1, 2]}}}


def test_json_that_does_not_parse_arrives_as_bytes(client):
    seen = probe(client, content=b"{nope", headers={"content-type": "application/json"})
    assert seen["fields"]["body"] == {"type": "bytes", "value": b"{nope".hex()}


def test_text_arrives_as_str(client):
    seen = probe(client, content="héllo".encode(), headers={"content-type": "text/plain; charset=utf-8"})
    assert seen["fields"]["body"] == {"type": "str", "value": "héllo"}


def test_multipart_parts_arrive_under_their_names(client):
    seen = probe(client, files={"data": ("x.bin", b"\x01\x02", "application/octet-stream"),
                                "meta": ("m.json", b'{"k": 1}', "application/json")},
                 data={"plain": "value"})
    assert seen["fields"] == {
        "plain": {"type": "bytes", "value": b"value".hex()},
        "data": {"type": "bytes", "value": "0102"},
        "meta": {"type": "dict", "value": {"k": 1}},
    }


def test_urlencoded_form_fields_arrive_under_their_names(client):
    seen = probe(client, data={"a": "1", "b": "two words"})
    assert seen["fields"] == {"a": {"type": "bytes", "value": b"1".hex()},
                              "b": {"type": "bytes", "value": b"two words".hex()}}


def test_a_malformed_multipart_body_is_answered_400(client):
    response = client.post("/predictions/inputs", content=b"not multipart at all",
                           headers={"content-type": "multipart/form-data; boundary=XYZ"})
    assert response.status_code == 400
    assert response.json()["type"] == "BadRequestException"


def test_request_headers_are_visible_through_the_context(client):
    seen = probe(client, content=b"x", headers={"X-Probe": "yes"})
    assert seen["x_probe"] == "yes"
    assert "body" in seen["all_headers"] and "x-probe" in seen["all_headers"]


def test_each_request_has_a_request_id(client):
    first, second = probe(client, content=b"a"), probe(client, content=b"b")
    assert first["request_id"] and first["request_id"] != second["request_id"]


# -- responses ---------------------------------------------------------------------------

def test_custom_status_content_type_and_headers_reach_the_response(client):
    response = client.post("/predictions/responses", json={
        "status": 599, "content_type": "application/x-custom",
        "headers": {"X-Model-Says": "hello"},
    })
    assert response.status_code == 599
    assert response.headers["content-type"] == "application/x-custom"
    assert response.headers["x-model-says"] == "hello"
    assert response.json() == {"idx": 0}


def test_without_a_content_type_set_none_is_sent(client):
    response = client.post("/predictions/responses", json={"status": 200})
    assert "content-type" not in response.headers


def test_a_dict_answer_is_sent_as_indented_json(client):
    response = fail(client, "dict")
    body = response.json()
    assert response.text == json.dumps({"answer": 42, "pid": body["pid"]}, indent=2)


def test_a_tensor_answer_is_sent_as_torch_save_bytes(client):
    import torch

    response = fail(client, "tensor")
    assert torch.equal(torch.load(io.BytesIO(response.content)), torch.arange(4))


# -- errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("how, code, message", [
    ("raise", 503, "Prediction failed"),
    ("memory", 507, "Out of resources"),
    ("cuda", 507, "Out of resources"),
    ("not-a-list", 503, "Invalid model predict output"),
    ("wrong-length", 503, "number of batch response mismatched"),
    ("unserializable", 503, "Unsupported model output data type."),
])
def test_handler_failures_are_answered_as_torchserve_does(client, how, code, message):
    response = fail(client, how)
    assert response.status_code == code
    assert response.json() == {"code": code, "type": "InternalServerException", "message": message}


def test_a_prediction_exception_answers_with_its_code_and_message(client):
    response = fail(client, "prediction-exception", **{"X-Code": "418"})
    assert response.status_code == 418
    assert response.json()["message"] == "teapot refuses"


def test_a_prediction_exception_with_413_is_answered_507(client):
    assert fail(client, "prediction-exception", **{"X-Code": "413"}).status_code == 507


def test_the_worker_survives_a_failing_batch(client):
    before = fail(client, "none").text
    fail(client, "raise")
    assert fail(client, "none").text == before  # same worker process, still serving


# -- model-config yaml ---------------------------------------------------------------------

def test_the_yaml_reaches_the_handler_and_sets_batch_size(client):
    report = client.post("/predictions/yamlprobe", content=b"x").json()
    assert report["model_yaml_config"]["custom"] == {"answer": 42}
    assert report["system_properties"]["batch_size"] == 4
    assert report["manifest"]["model"]["configFile"] == "model-config.yaml"


def test_system_properties_are_torchserves(client):
    properties = client.post("/predictions/yamlprobe", content=b"x").json()["system_properties"]
    assert properties["gpu_id"] is None
    assert properties["server_name"] == "MMS"
    assert properties["limit_max_image_pixels"] is True
    assert Path(properties["model_dir"]).is_dir()


def test_the_yaml_min_workers_starts_that_many_workers(client):
    # Requests one after another go to the idle worker that waited longest: with two
    # workers they alternate, so four requests see both.
    pids = {client.post("/predictions/yamlprobe", content=b"x").json()["pid"] for _ in range(4)}
    assert len(pids) == 2
