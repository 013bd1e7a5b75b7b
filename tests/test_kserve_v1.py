"""KServe v1 over REST against a real server whose handler was written for TorchServe's kserve
envelope (service_envelope=kserve): `{"instances": [...]}` in, `{"predictions": [...]}` out."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from pyserve.worker.envelopes import envelope_class

from helpers import EXAMPLES, HANDLERS, archive_model, start_server

BATCHING = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 4\nmaxBatchDelay: 2000\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("kserve")
    (home / "model-config.yaml").write_text(BATCHING)
    archive_model(home / "store", "sum", HANDLERS / "kserve_v1_sum.py",
                  extra=["--config-file", str(home / "model-config.yaml")])
    archive_model(home / "store", "echo", EXAMPLES / "echo" / "echo_handler.py")
    server = start_server(home, home / "store", ["sum.mar"], service_envelope="kserve",
                          enable_model_api="true")
    assert httpx.post(f"{server.management_url}/models", params={
        "url": "echo.mar", "model_name": "idle", "initial_workers": 0}, timeout=60).is_success
    yield server
    server.stop()


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.inference_url, timeout=60) as http:
        yield http


def test_predict_answers_each_instance_in_predictions(http):
    response = http.post("/v1/models/sum:predict", json={"instances": [[1, 2], [3, 4, 5]]})
    assert response.status_code == 200
    assert response.json() == {"predictions": [{"sum": 3, "rows": 2}, {"sum": 12, "rows": 2}]}


def test_explain_answers_in_explanations(http):
    response = http.post("/v1/models/sum:explain", json={"instances": [[1, 2]]})
    assert response.json() == {"explanations": [{"sum": 3, "rows": 1}]}


def test_the_body_is_read_as_json_whatever_its_content_type(http):
    # curl -d sends application/x-www-form-urlencoded unless told otherwise
    response = http.post("/v1/models/sum:predict", content=b'{"instances": [[2, 2]]}',
                         headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.json() == {"predictions": [{"sum": 4, "rows": 1}]}


def test_a_model_that_can_serve_is_ready(http):
    response = http.get("/v1/models/sum")
    assert (response.status_code, response.json()) == (200, {"name": "sum", "ready": True})


def test_a_model_with_no_worker_is_not_ready(http):
    response = http.get("/v1/models/idle")
    assert (response.status_code, response.json()) == (
        503, {"error": "Model with name idle is not ready."})


@pytest.mark.parametrize("method, path", [("GET", "/v1/models/nope"),
                                          ("POST", "/v1/models/nope:predict"),
                                          ("POST", "/v1/models/nope:explain")])
def test_an_unknown_model_answers_404_with_an_error_object(http, method, path):
    response = http.request(method, path, json={"instances": []})
    assert (response.status_code, response.json()) == (404, {"error": "Model not found: nope"})


@pytest.mark.parametrize("body, message", [
    (b"[1, 2", "Unrecognized request format"),
    (b"[[1, 2]]", "Unrecognized request format: the body must be a JSON object"),
    (b'{"instances": 5}', 'Expected "instances" to be a list'),
    (b'{"inputs": [[1]]}', 'A KServe v1 request needs an "instances" list'),  # the envelope's
])
def test_a_request_that_is_not_kserve_v1_is_answered_400_saying_why(http, body, message):
    response = http.post("/v1/models/sum:predict", content=body,
                         headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"].startswith(message)


def test_requests_batched_together_each_get_their_own_predictions(http):
    # TorchServe's envelope reads only a batch's first request: both would be answered 503.
    answers: dict[str, httpx.Response] = {}

    def predict(key: str, instances: list) -> None:
        answers[key] = http.post("/v1/models/sum:predict", json={"instances": instances})

    busy = threading.Thread(target=predict, args=("busy", [{"sleep": 1.0}]))
    busy.start()
    time.sleep(0.3)  # the worker sleeps; the next two wait for it, and leave as one batch
    threads = [threading.Thread(target=predict, args=("one", [[1]])),
               threading.Thread(target=predict, args=("two", [[2], [3]]))]
    for thread in threads:
        thread.start()
    for thread in [busy, *threads]:
        thread.join()
    assert answers["one"].json() == {"predictions": [{"sum": 1, "rows": 3}]}
    assert answers["two"].json() == {"predictions": [{"sum": 2, "rows": 3}, {"sum": 3, "rows": 3}]}


def test_an_unknown_service_envelope_is_refused_naming_those_there_are():
    with pytest.raises(ValueError, match=r"service_envelope='json' is not an envelope pyserve "
                                         r"has \(kserve, kservev2\)"):
        envelope_class("json")
