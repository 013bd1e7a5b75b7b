"""The inference API through real HTTP: routes, TorchServe's headers and error answers."""

from __future__ import annotations

import uuid

import httpx
import pytest

from helpers import HANDLERS, EXAMPLES, archive_model, start_server

MAX_REQUEST_SIZE = 4096


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("inference")
    store = work / "store"
    archive_model(store, "echo", EXAMPLES / "echo" / "echo_handler.py")
    archive_model(store, "probe", HANDLERS / "request_probe.py")
    server = start_server(work, store, ["echo=echo.mar", "probe=probe.mar"],
                          default_workers_per_model=1, max_request_size=MAX_REQUEST_SIZE)
    yield server
    server.stop()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.inference_url, timeout=60) as client:
        yield client


@pytest.mark.parametrize("method", ["POST", "PUT", "GET"])
def test_predictions_answer_post_put_and_get(client, method):
    response = client.request(method, "/predictions/echo", content=b"hi")
    assert response.status_code == 200
    assert response.content == b"hi"


def test_extra_path_segments_reach_the_handler_as_url_path(client):
    seen = client.post("/predictions/probe/1.0/v1/chat/completions", content=b"x").json()
    assert seen["url_path"] == "v1/chat/completions"


def test_without_extra_segments_url_path_is_empty(client):
    assert client.post("/predictions/probe", content=b"x").json()["url_path"] == ""


def test_predictions_say_explain_false(client):
    assert client.post("/predictions/probe", content=b"x").json()["explain"] == "False"


# a request both KServe v1 and v2 take (pyserve.frontend.kserve checks them)
KSERVE_REQUEST = {"instances": [1], "inputs": [{"name": "x", "shape": [1], "datatype": "INT32",
                                                "data": [1]}]}


@pytest.mark.parametrize("path", ["/explanations/probe", "/explanations/probe/1.0",
                                  "/v1/models/probe:explain", "/v2/models/probe/explain"])
def test_explanations_say_explain_true(client, path):
    assert client.post(path, json=KSERVE_REQUEST).json()["explain"] == "True"


@pytest.mark.parametrize("path", ["/v1/models/echo:predict", "/v2/models/echo/infer"])
def test_kserve_paths_hand_a_handler_without_an_envelope_the_request_document(client, path):
    assert client.post(path, json=KSERVE_REQUEST).json() == KSERVE_REQUEST


def test_every_response_has_torchserves_headers(client):
    response = client.post("/predictions/echo", content=b"x")
    uuid.UUID(response.headers["x-request-id"])
    assert response.headers["pragma"] == "no-cache"
    assert response.headers["cache-control"] == "no-cache; no-store, must-revalidate, private"
    assert response.headers["expires"] == "Thu, 01 Jan 1970 00:00:00 UTC"


def test_the_handler_sees_the_request_id_the_client_gets(client):
    response = client.post("/predictions/probe", content=b"x")
    assert response.json()["request_id"] == response.headers["x-request-id"]


def test_the_clients_own_request_id_is_not_reused(client):
    response = client.post("/predictions/echo", content=b"x", headers={"x-request-id": "mine"})
    assert response.headers["x-request-id"] != "mine"


def test_an_unknown_path_is_404_resource_not_found(client):
    response = client.get("/nowhere")
    assert response.status_code == 404
    assert response.json() == {
        "code": 404, "type": "ResourceNotFoundException",
        "message": "Requested resource is not found, please refer to API document.",
    }


def test_a_wrong_method_is_405(client):
    response = client.delete("/predictions/echo")
    assert response.status_code == 405
    assert response.json()["type"] == "MethodNotAllowedException"


def test_a_body_over_max_request_size_is_413_with_an_empty_body(client):
    response = client.post("/predictions/echo", content=b"x" * (MAX_REQUEST_SIZE + 1))
    assert response.status_code == 413
    assert response.content == b""


def test_a_chunked_body_over_max_request_size_is_413(client):
    def chunks():
        for _ in range(8):
            yield b"y" * 1024

    assert client.post("/predictions/echo", content=chunks()).status_code == 413


def test_a_body_at_max_request_size_is_served(client):
    body = b"z" * MAX_REQUEST_SIZE
    assert client.post("/predictions/echo", content=body).content == body


@pytest.mark.parametrize("method, path", [("OPTIONS", "/"), ("GET", "/api-description")])
def test_the_api_description_is_an_openapi_document_of_this_listener(client, method, path):
    document = client.request(method, path).json()
    assert document["openapi"].startswith("3.")
    assert "/predictions/{model_name}" in document["paths"]
    assert "/models" not in document["paths"]


def test_ping_is_healthy_when_every_model_has_workers(client):
    response = client.get("/ping")
    assert (response.status_code, response.json()) == (200, {"status": "Healthy"})


def test_ping_is_unhealthy_while_a_model_has_no_live_worker(tmp_path):
    store = tmp_path / "store"
    archive_model(store, "broken", HANDLERS / "broken_handler.py")
    server = start_server(tmp_path, store, [], enable_model_api="true")
    try:
        registered = httpx.post(f"{server.management_url}/models",
                                params={"url": "broken.mar", "initial_workers": 0}, timeout=60)
        healthy = httpx.get(f"{server.inference_url}/ping", timeout=60)
        scaled = httpx.put(f"{server.management_url}/models/broken",
                           params={"min_worker": 1, "synchronous": "true"}, timeout=60)
        unhealthy = httpx.get(f"{server.inference_url}/ping", timeout=60)
    finally:
        server.stop()
    assert registered.status_code == 200
    assert healthy.status_code == 200  # no workers wanted, none missing
    assert scaled.status_code == 500  # the worker could not load its handler
    assert (unhealthy.status_code, unhealthy.json()) == (500, {"status": "Unhealthy"})
