"""The management API through real HTTP: every route, TorchServe's answers and error bodies."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from helpers import HANDLERS, EXAMPLES, archive_model, start_server


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("management_store")
    archive_model(store, "echo", EXAMPLES / "echo" / "echo_handler.py")
    for name in ("alpha", "beta", "gamma", "delta"):
        archive_model(store, name, EXAMPLES / "echo" / "echo_handler.py")
    versions = tmp_path_factory.mktemp("versions")
    for version in ("1.0", "2.0"):
        archive_model(versions, "multi", HANDLERS / "version_probe.py", version=version)
        (versions / "multi.mar").rename(store / f"multi-{version}.mar")
    archive_model(store, "broken", HANDLERS / "broken_handler.py")
    config = tmp_path_factory.mktemp("huge_yaml") / "model-config.yaml"
    config.write_text("batchSize: 4\nmaxBatchDelay: 100000000000000000000\n")
    archive_model(store, "huge", EXAMPLES / "echo" / "echo_handler.py",
                  extra=["--config-file", str(config)])
    return store


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    work = tmp_path_factory.mktemp("management")
    server = start_server(work, store, ["echo=echo.mar"], enable_model_api="true",
                          default_workers_per_model=1, allowed_urls="http://127.0.0.1:[0-9]+/.*")
    yield server
    server.stop()


@pytest.fixture
def infer(server):
    with httpx.Client(base_url=server.inference_url, timeout=120) as client:
        yield client


@pytest.fixture
def registered(api):
    """Registers a model for one test and unregisters it afterwards."""
    names = []

    def register(url: str, **params):
        response = api.post("/models", params={"url": url, **params})
        if response.status_code in (200, 202):
            names.append(params.get("model_name") or Path(url).stem.split("-")[0])
        return response

    yield register
    for name in names:
        described = api.get(f"/models/{name}/all")
        if described.status_code != 200:
            continue
        default = api.get(f"/models/{name}").json()[0]["modelVersion"]
        others = [m["modelVersion"] for m in described.json() if m["modelVersion"] != default]
        for version in [*others, default]:  # the default version goes last, as it must
            api.delete(f"/models/{name}/{version}")


# -- register ----------------------------------------------------------------------------

def test_register_from_the_model_store(registered, infer):
    response = registered("alpha.mar", initial_workers=1)
    assert response.status_code == 200
    assert response.json() == {"status": 'Model "alpha" Version: 1.0 registered with 1 initial workers'}
    assert infer.post("/predictions/alpha", content=b"a").content == b"a"


def test_register_without_initial_workers_starts_one(registered, api):
    assert registered("alpha.mar").status_code == 200
    assert len(api.get("/models/alpha").json()[0]["workers"]) == 1


def test_register_with_zero_workers_says_how_to_add_them(registered, infer):
    response = registered("alpha.mar", initial_workers=0)
    assert response.json()["status"] == (
        'Model "alpha" Version: 1.0 registered with 0 initial workers. '
        "Use scale workers API to add workers for the model.")
    refused = infer.post("/predictions/alpha", content=b"a")
    assert refused.status_code == 503
    assert refused.json()["type"] == "ServiceUnavailableException"
    assert "has no worker to serve inference request" in refused.json()["message"]


def test_register_asynchronously_answers_202(registered):
    response = registered("alpha.mar", synchronous="false")
    assert response.status_code == 202
    assert response.json() == {"status": "Processing worker updates..."}


def test_register_takes_parameters_from_a_json_body(api, registered):
    response = api.post("/models", json={"url": "beta.mar", "model_name": "bravo", "batch_size": 3,
                                         "max_batch_delay": 7, "initial_workers": 1})
    assert response.status_code == 200, response.text
    described = api.get("/models/bravo").json()[0]
    assert (described["batchSize"], described["maxBatchDelay"]) == (3, 7)
    api.delete("/models/bravo")


def test_register_the_same_version_twice_is_409(registered, api):
    registered("alpha.mar", initial_workers=0)
    response = api.post("/models", params={"url": "alpha.mar"})
    assert response.status_code == 409
    assert response.json() == {"code": 409, "type": "ConflictStatusException",
                               "message": "Model version 1.0 is already registered for model alpha"}


def test_register_without_url_is_400(api):
    response = api.post("/models")
    assert response.status_code == 400
    assert response.json()["message"] == "Parameter url is required."


def test_register_a_missing_archive_is_404(api):
    response = api.post("/models", params={"url": "nothere.mar"})
    assert response.status_code == 404
    assert response.json() == {"code": 404, "type": "ModelNotFoundException",
                               "message": "Model not found at: nothere.mar"}


def test_register_a_path_with_dot_dot_is_refused(api):
    response = api.post("/models", params={"url": "../escape.mar"})
    assert response.status_code == 404
    assert "Relative path is not allowed" in response.json()["message"]


def test_register_an_unknown_runtime_is_400(api):
    response = api.post("/models", params={"url": "alpha.mar", "runtime": "python4"})
    assert response.status_code == 400
    assert response.json()["message"] == "Invalid RuntimeType value: python4"


def test_register_a_handler_that_cannot_load_is_500_and_undone(api):
    response = api.post("/models", params={"url": "broken.mar", "initial_workers": 1})
    assert response.status_code == 500
    assert response.json()["message"] == "Failed to start workers for model broken version: 1.0"
    assert api.get("/models/broken").status_code == 404


def test_register_a_url_outside_allowed_urls_is_refused(api):
    response = api.post("/models", params={"url": "https://example.com/evil.mar"})
    assert response.status_code == 404
    assert "does not match any allowed URL" in response.json()["message"]


def test_register_an_absolute_path_outside_the_store_is_refused(api, store, tmp_path):
    outside = tmp_path / "outside.mar"
    shutil.copy(store / "gamma.mar", outside)
    response = api.post("/models", params={"url": str(outside), "model_name": "outside"})
    assert response.status_code == 404
    assert "outside the model store" in response.json()["message"]
    assert api.get("/models/outside").status_code == 404


def test_an_absolute_path_matching_allowed_urls_as_file_url_is_registered(store, tmp_path):
    outside = tmp_path / "outside" / "far.mar"
    outside.parent.mkdir()
    shutil.copy(store / "gamma.mar", outside)
    server = start_server(tmp_path, store, [], enable_model_api="true",
                          allowed_urls=f"file://{outside.parent}/.*")
    try:
        response = httpx.post(f"{server.management_url}/models",
                              params={"url": str(outside), "model_name": "far"}, timeout=120)
        assert response.status_code == 200, response.text
    finally:
        server.stop()


@pytest.fixture
def web_server(store, tmp_path):
    """A real HTTP server on loopback that serves a copy of one archive."""
    root = tmp_path / "web"
    root.mkdir()
    shutil.copy(store / "gamma.mar", root / "remote.mar")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=web.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{web.server_address[1]}"
    web.shutdown()
    web.server_close()


def test_register_from_an_allowed_url_downloads_into_the_store(registered, web_server, store, infer):
    response = registered(f"{web_server}/remote.mar", model_name="remote")
    assert response.status_code == 200, response.text
    assert (store / "remote.mar").exists()
    assert infer.post("/predictions/remote", content=b"g").content == b"g"


def test_a_download_never_overwrites_a_file_in_the_store(api, web_server, store):
    (store / "remote.mar").write_bytes(b"mine")
    try:
        response = api.post("/models", params={"url": f"{web_server}/remote.mar"})
        assert response.json() == {"code": 409, "type": "ConflictStatusException",
                                   "message": "Model file already exists remote.mar"}
        assert response.status_code == 409  # TorchServe: 500 InternalServerException
        assert (store / "remote.mar").read_bytes() == b"mine"
    finally:
        (store / "remote.mar").unlink()


def test_unregistering_a_downloaded_model_deletes_its_download(registered, api, web_server, store):
    assert registered(f"{web_server}/remote.mar", model_name="remote").status_code == 200
    api.delete("/models/remote")
    assert not (store / "remote.mar").exists()


def test_a_url_that_cannot_be_fetched_is_400(api, web_server):
    response = api.post("/models", params={"url": f"{web_server}/absent.mar"})
    assert response.status_code == 400
    assert response.json() == {"code": 400, "type": "DownloadArchiveException",
                               "message": f"Failed to download archive from: {web_server}/absent.mar"}


# -- list and describe -------------------------------------------------------------------

def test_list_pages_through_models_sorted_by_name(registered, api):
    for name in ("alpha", "beta", "delta"):
        registered(f"{name}.mar", initial_workers=0)
    first = api.get("/models", params={"limit": 2}).json()
    second = api.get("/models", params={"limit": 2, "next_page_token": first["nextPageToken"]}).json()
    assert first == {"nextPageToken": "2", "models": [
        {"modelName": "alpha", "modelUrl": "alpha.mar"}, {"modelName": "beta", "modelUrl": "beta.mar"}]}
    assert [m["modelName"] for m in second["models"]] == ["delta", "echo"]
    assert "nextPageToken" not in second


def test_list_treats_bad_paging_values_as_defaults(api):
    listing = api.get("/models", params={"limit": "junk", "next_page_token": "-5"}).json()
    assert {"modelName": "echo", "modelUrl": "echo.mar"} in listing["models"]


def test_a_repeated_query_parameter_takes_its_first_value(registered, api):
    for name in ("alpha", "beta"):
        registered(f"{name}.mar", initial_workers=0)
    listing = api.get("/models?limit=1&limit=3").json()
    assert len(listing["models"]) == 1


def test_describe_has_torchserves_fields_in_order(api):
    described = api.get("/models/echo").json()
    assert isinstance(described, list) and len(described) == 1
    model = described[0]
    assert list(model)[:10] == ["modelName", "modelVersion", "modelUrl", "runtime", "minWorkers",
                                "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout",
                                "startupTimeout"]
    assert (model["modelName"], model["modelVersion"], model["modelUrl"]) == ("echo", "1.0", "echo.mar")
    assert (model["batchSize"], model["maxBatchDelay"], model["loadedAtStartup"]) == (1, 100, True)
    worker, = model["workers"]
    assert worker["status"] == "READY"
    assert worker["gpu"] is False and worker["gpuUsage"] == "N/A"
    assert worker["memoryUsage"] > 0 and worker["pid"] > 0
    assert worker["startTime"].endswith("Z")
    assert model["jobQueueStatus"] == {"remainingCapacity": 100, "pendingRequests": 0}


def test_describe_an_unknown_model_is_404(api):
    response = api.get("/models/nope")
    assert response.status_code == 404
    assert response.json()["message"] == "Model not found: nope"


# -- several versions ----------------------------------------------------------------------

@pytest.fixture
def two_versions(registered, api):
    assert registered("multi-1.0.mar", initial_workers=1).status_code == 200
    assert registered("multi-2.0.mar", initial_workers=1).status_code == 200
    return api


def test_versions_are_served_side_by_side(two_versions, infer):
    assert infer.post("/predictions/multi/1.0", content=b"x").text == "1.0"
    assert infer.post("/predictions/multi/2.0", content=b"x").text == "2.0"
    assert infer.post("/predictions/multi", content=b"x").text == "1.0"  # the first registered


def test_describe_all_lists_every_version(two_versions):
    assert [m["modelVersion"] for m in two_versions.get("/models/multi/all").json()] == ["1.0", "2.0"]


def test_set_default_changes_what_the_bare_name_serves(two_versions, infer):
    response = two_versions.put("/models/multi/2.0/set-default")
    assert response.json() == {"status": 'Default version successfully updated for model "multi" to "2.0"'}
    assert infer.post("/predictions/multi", content=b"x").text == "2.0"


def test_set_default_to_an_unknown_version_is_404(two_versions):
    response = two_versions.put("/models/multi/9.0/set-default")
    assert response.status_code == 404
    assert response.json()["message"] == "Model version 9.0 does not exist for model multi"


def test_the_default_version_cannot_be_removed_while_others_exist(two_versions):
    response = two_versions.delete("/models/multi/1.0")
    assert response.status_code == 403
    assert response.json() == {"code": 403, "type": "InvalidModelVersionException",
                               "message": "Cannot remove default version for model multi"}


def test_a_non_default_version_can_be_removed(two_versions, infer):
    assert two_versions.delete("/models/multi/2.0").status_code == 200
    assert infer.post("/predictions/multi/2.0", content=b"x").status_code == 404


def test_describe_customized_asks_the_handler(two_versions):
    described = two_versions.get("/models/multi/2.0", params={"customized": "true"}).json()[0]
    assert described["customizedMetadata"] == {"described_by": "handler", "version": "2.0"}


# -- scale -----------------------------------------------------------------------------------

def test_scale_synchronously_to_two_workers(registered, api):
    registered("delta.mar", initial_workers=1)
    response = api.put("/models/delta", params={"min_worker": 2, "synchronous": "true"})
    assert response.json() == {"status": "Workers scaled to 2 for model: delta"}
    described = api.get("/models/delta").json()[0]
    assert (described["minWorkers"], described["maxWorkers"], len(described["workers"])) == (2, 2, 2)


def test_scale_with_a_version_names_it(registered, api):
    registered("delta.mar", initial_workers=1)
    response = api.put("/models/delta/1.0", params={"min_worker": 1, "synchronous": "true"})
    assert response.json() == {"status": "Workers scaled to 1 for model: delta, version: 1.0"}


def test_scale_asynchronously_answers_202(registered, api):
    registered("delta.mar", initial_workers=1)
    response = api.put("/models/delta", params={"min_worker": 1})
    assert (response.status_code, response.json()) == (202, {"status": "Processing worker updates..."})


def test_scale_with_max_below_min_is_400(api):
    response = api.put("/models/echo", params={"min_worker": 2, "max_worker": 1})
    assert response.status_code == 400
    assert response.json()["message"] == "max_worker cannot be less than min_worker."


def test_scale_an_unknown_version_is_404(api):
    response = api.put("/models/echo/9.9", params={"min_worker": 1})
    assert response.status_code == 404
    assert response.json()["message"] == "Model version: 9.9 does not exist for model: echo"


# -- unregister ----------------------------------------------------------------------------------

def test_unregister_answers_and_forgets_the_model(registered, api, infer):
    registered("delta.mar", initial_workers=1)
    response = api.delete("/models/delta")
    assert response.json() == {"status": 'Model "delta" unregistered'}
    assert api.get("/models/delta").status_code == 404
    assert infer.post("/predictions/delta", content=b"x").status_code == 404


def test_unregister_an_unknown_model_is_404(api):
    assert api.delete("/models/nope").status_code == 404


def test_put_on_the_collection_is_405(api):
    assert api.put("/models").status_code == 405


# -- traffic while registering ------------------------------------------------------------------

def test_registering_while_traffic_flows_to_another_model_loses_nothing(registered, server):
    answers = []
    stop = threading.Event()

    def traffic():
        with httpx.Client(base_url=server.inference_url, timeout=60) as client:
            while not stop.is_set():
                answers.append(client.post("/predictions/echo", content=b"steady").status_code)

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        time.sleep(0.5)
        assert registered("beta.mar", initial_workers=1).status_code == 200
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(60)
    assert answers and set(answers) == {200}


def test_the_model_api_is_off_unless_enabled(store, tmp_path):
    server = start_server(tmp_path, store, [])
    try:
        register = httpx.post(f"{server.management_url}/models", params={"url": "alpha.mar"}, timeout=60)
        delete = httpx.delete(f"{server.management_url}/models/alpha", timeout=60)
        listing = httpx.get(f"{server.management_url}/models", timeout=60)
    finally:
        server.stop()
    assert register.status_code == 405 and delete.status_code == 405
    assert register.json()["type"] == "MethodNotAllowedException"
    assert listing.status_code == 200


def test_a_register_json_body_over_max_request_size_is_413(api):
    response = api.post("/models", content=b'{"url": "' + b"x" * 7_000_000 + b'"}',
                        headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_register_with_a_model_config_value_past_a_java_int_is_refused_naming_it(api):
    response = api.post("/models", params={"url": "huge.mar", "synchronous": "true"})
    assert response.status_code == 400
    assert "maxBatchDelay" in response.json()["message"]
    assert api.get("/models/huge").status_code == 404
