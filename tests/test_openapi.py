"""The OpenAPI documents the three listeners serve: valid, complete, and each about its own routes."""

from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate

from pyserve.frontend.openapi import inference_api, management_api, metrics_api

DOCUMENTS = {"inference": inference_api, "management": management_api, "metrics": metrics_api}
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(params=sorted(DOCUMENTS))
def document(request) -> dict:
    return DOCUMENTS[request.param]("1.2.3")


def operations(document: dict):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def deref(document: dict, node: dict) -> dict:
    while "$ref" in node:
        target = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def test_each_document_validates_as_openapi_3(document):
    validate(document)
    assert document["openapi"] == "3.0.1"


def test_every_operation_has_an_operation_id_and_responses(document):
    for path, method, operation in operations(document):
        assert operation.get("operationId"), (path, method)
        assert operation.get("responses"), (path, method)


def test_operation_ids_are_unique_within_a_document(document):
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids))


def test_every_path_template_parameter_is_declared(document):
    for path, method, operation in operations(document):
        declared = {deref(document, p)["name"] for p in operation.get("parameters", [])
                    if deref(document, p)["in"] == "path"}
        assert declared == set(re.findall(r"{([^}]+)}", path)), (path, method)


def test_error_schema_requires_code_type_and_message(document):
    error = document["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"code", "type", "message"}
    assert error["properties"]["code"]["type"] == "integer"
    assert error["properties"]["type"]["type"] == "string"
    assert error["properties"]["message"]["type"] == "string"


def test_every_listener_describes_itself_at_root_and_api_description(document):
    assert "200" in document["paths"]["/"]["options"]["responses"]
    assert "200" in document["paths"]["/api-description"]["get"]["responses"]


def test_inference_predictions_have_a_default_response_for_any_status():
    paths = inference_api("1")["paths"]
    for path in ("/predictions/{model_name}", "/predictions/{model_name}/{model_version}"):
        for method in ("get", "post", "put"):
            responses = paths[path][method]["responses"]
            assert "default" in responses
            assert {"400", "404", "413", "500", "503", "507"} <= set(responses)


def test_inference_has_kserve_routes_with_literal_colon():
    paths = inference_api("1")["paths"]
    assert "post" in paths["/v1/models/{model_name}:predict"]
    assert "post" in paths["/v1/models/{model_name}:explain"]
    assert "post" in paths["/v2/models/{model_name}/infer"]
    assert "post" in paths["/v2/models/{model_name}/explain"]


def test_management_register_documents_405_and_409():
    responses = management_api("1")["paths"]["/models"]["post"]["responses"]
    assert {"405", "409"} <= set(responses)


def test_management_unregister_documents_403_and_405():
    paths = management_api("1")["paths"]
    for path in ("/models/{model_name}", "/models/{model_name}/{model_version}"):
        assert {"403", "404", "405"} <= set(paths[path]["delete"]["responses"])


def test_inference_and_management_operations_accept_a_token_and_may_answer_400():
    for document in (inference_api("1"), management_api("1")):
        for path, method, operation in operations(document):
            if path in ("/", "/api-description"):
                continue
            names = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
            assert "Authorization" in names, (path, method)
            assert "400" in operation["responses"], (path, method)


def test_metrics_answers_prometheus_text():
    operation = metrics_api("1")["paths"]["/metrics"]["get"]
    assert "text/plain; version=0.0.4; charset=utf-8" in operation["responses"]["200"]["content"]
    assert [p["name"] for p in operation["parameters"]] == ["name[]"]


def test_info_version_is_the_version_given():
    assert inference_api("x")["info"]["version"] == "x"
    assert management_api("y")["info"]["version"] == "y"
    assert metrics_api("z")["info"]["version"] == "z"


def test_documents_share_only_the_api_description_paths():
    inference, management, metrics = (set(f("1")["paths"]) for f in DOCUMENTS.values())
    shared = {"/", "/api-description"}
    assert inference & management == shared
    assert inference & metrics == shared
    assert management & metrics == shared


def test_documents_are_independent_copies():
    first = inference_api("1")
    first["components"]["schemas"]["Error"]["required"].clear()
    assert inference_api("1")["components"]["schemas"]["Error"]["required"]


# -- the documents match the apps ----------------------------------------------------------

def _served_operations(app) -> set[tuple[str, str]]:
    """(path template, method) for every route a listener app really serves."""
    from starlette.routing import Route

    operations = set()
    while not hasattr(app, "routes"):  # unwrap the ASGI layers around the Starlette app
        app = getattr(app, "fallback", None) or app.app
    for route in app.routes:
        if isinstance(route, Route):
            path = route.path.replace(":path}", "}")
            operations |= {(path, method.lower()) for method in route.methods if method != "HEAD"}
    return operations


def _documented_operations(document: dict) -> set[tuple[str, str]]:
    return {(path, method) for path, item in document["paths"].items()
            for method in item if method in ("get", "put", "post", "delete", "options", "patch")}


@pytest.fixture(scope="module")
def apps():
    import asyncio

    from pyserve.config import Settings
    from pyserve.engine import Engine
    from pyserve.frontend.inference import inference_app
    from pyserve.frontend.management import management_app
    from pyserve.frontend.metrics import metrics_app

    settings = Settings()
    engine = Engine(settings)
    yield {
        "inference": (inference_app(engine, settings, "t"), inference_api("t")),
        "management": (management_app(engine, settings, "t"), management_api("t")),
        "metrics": (metrics_app(engine.metrics, "t"), metrics_api("t")),
    }
    asyncio.run(engine.close())


@pytest.mark.parametrize("listener", ["inference", "management", "metrics"])
def test_the_document_lists_exactly_the_operations_the_listener_serves(apps, listener):
    app, document = apps[listener]
    assert _documented_operations(document) == _served_operations(app)
