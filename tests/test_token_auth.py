"""Token authorization, on as in TorchServe 0.12 unless disabled: key file, Bearer keys per listener."""

from __future__ import annotations

import json
import os
import stat

import httpx
import pytest

from helpers import start_server


@pytest.fixture(scope="module")
def secured(model_store, tmp_path_factory):
    work = tmp_path_factory.mktemp("tokens")
    server = start_server(work, model_store, ["echo=echo.mar"], disable_token_authorization="false",
                          default_workers_per_model=1)
    yield server, work / "key_file.json"
    server.stop()


def keys(key_file) -> dict:
    document = json.loads(key_file.read_text())
    return {kind: document[kind]["key"] for kind in ("inference", "management", "API")}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_the_key_file_holds_three_keys_readable_only_by_the_owner(secured):
    _, key_file = secured
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    document = json.loads(key_file.read_text())
    assert set(document) == {"management", "inference", "API"}
    assert "expiration time" in document["inference"] and len(document["API"]["key"]) == 8


def test_a_prediction_without_a_key_is_400_invalid_key(secured):
    server, _ = secured
    response = httpx.post(f"{server.inference_url}/predictions/echo", content=b"x", timeout=60)
    assert response.status_code == 400
    assert response.json() == {
        "code": 400, "type": "InvalidKeyException",
        "message": "Token Authorization failed. Token either incorrect, expired, or not provided correctly",
    }


def test_a_prediction_with_the_inference_key_is_served(secured):
    server, key_file = secured
    response = httpx.post(f"{server.inference_url}/predictions/echo", content=b"x",
                          headers=bearer(keys(key_file)["inference"]), timeout=60)
    assert (response.status_code, response.content) == (200, b"x")


def test_ping_needs_the_inference_key_too(secured):
    server, key_file = secured
    assert httpx.get(f"{server.inference_url}/ping", timeout=60).status_code == 400
    with_key = httpx.get(f"{server.inference_url}/ping", headers=bearer(keys(key_file)["inference"]),
                         timeout=60)
    assert with_key.status_code == 200


def test_the_management_key_does_not_open_the_inference_listener(secured):
    server, key_file = secured
    response = httpx.post(f"{server.inference_url}/predictions/echo", content=b"x",
                          headers=bearer(keys(key_file)["management"]), timeout=60)
    assert response.status_code == 400


def test_management_needs_the_management_key(secured):
    server, key_file = secured
    assert httpx.get(f"{server.management_url}/models", timeout=60).status_code == 400
    with_key = httpx.get(f"{server.management_url}/models", headers=bearer(keys(key_file)["management"]),
                         timeout=60)
    assert with_key.status_code == 200


def test_metrics_and_the_api_description_need_no_key(secured):
    server, _ = secured
    assert httpx.get(f"{server.metrics_url}/metrics", timeout=60).status_code == 200
    assert httpx.options(f"{server.inference_url}/", timeout=60).status_code == 200


def test_the_api_key_regenerates_a_key_and_the_old_one_stops_working(secured):
    server, key_file = secured
    before = keys(key_file)
    response = httpx.get(f"{server.management_url}/token", params={"type": "inference"},
                         headers=bearer(before["API"]), timeout=60)
    after = keys(key_file)
    assert response.status_code == 200
    assert after["inference"] != before["inference"] and after["management"] == before["management"]
    old = httpx.post(f"{server.inference_url}/predictions/echo", content=b"x",
                     headers=bearer(before["inference"]), timeout=60)
    new = httpx.post(f"{server.inference_url}/predictions/echo", content=b"x",
                     headers=bearer(after["inference"]), timeout=60)
    assert (old.status_code, new.status_code) == (400, 200)


def test_regenerating_without_the_api_key_is_refused(secured):
    server, key_file = secured
    response = httpx.get(f"{server.management_url}/token", params={"type": "inference"},
                         headers=bearer(keys(key_file)["management"]), timeout=60)
    assert response.status_code == 400
    assert response.json()["message"].startswith("Token Authentication failed")


def test_an_expired_key_is_refused(model_store, tmp_path):
    server = start_server(tmp_path, model_store, ["echo=echo.mar"], disable_token_authorization="false",
                          token_expiration_min="0", default_workers_per_model=1)
    try:
        response = httpx.post(f"{server.inference_url}/predictions/echo", content=b"x",
                              headers=bearer(keys(tmp_path / "key_file.json")["inference"]), timeout=60)
    finally:
        server.stop()
    assert response.status_code == 400


def test_the_key_file_is_removed_when_the_server_stops(model_store, tmp_path):
    server = start_server(tmp_path, model_store, [], disable_token_authorization="false")
    assert (tmp_path / "key_file.json").exists()
    server.stop()
    assert not (tmp_path / "key_file.json").exists()


def test_with_tokens_disabled_no_key_is_needed_and_no_file_written(model_store, tmp_path):
    server = start_server(tmp_path, model_store, ["echo=echo.mar"], default_workers_per_model=1)
    try:
        response = httpx.post(f"{server.inference_url}/predictions/echo", content=b"x", timeout=60)
    finally:
        server.stop()
    assert response.status_code == 200
    assert not (tmp_path / "key_file.json").exists()
