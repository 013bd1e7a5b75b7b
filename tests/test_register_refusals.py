"""Register bodies the JSON parser cannot take are refused as any bad body is: a JSON 400."""

from __future__ import annotations

import httpx
import pytest

from helpers import start_server

DEPTH = 5000


@pytest.fixture(scope="module")
def server(model_store, tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("refusals"), model_store, ["echo=echo.mar"],
                          enable_model_api="true", default_workers_per_model=1)
    yield server
    server.stop()


@pytest.mark.parametrize("body", [
    b"[" * DEPTH + b"]" * DEPTH,
    b'{"url": "echo.mar", "handler": ' + b'{"a": ' * DEPTH + b"1" + b"}" * DEPTH + b"}",
], ids=["arrays", "objects"])
def test_a_register_body_nested_thousands_deep_is_a_json_400(server, body):
    response = httpx.post(f"{server.management_url}/models", content=body,
                          headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json() == {"code": 400, "type": "BadRequestException",
                               "message": "Request body is nested too deeply"}
    listed = httpx.get(f"{server.management_url}/models", timeout=60).json()["models"]
    assert [model["modelName"] for model in listed] == ["echo"]
