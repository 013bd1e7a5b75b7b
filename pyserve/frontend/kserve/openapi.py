"""The KServe routes in the inference listener's OpenAPI document (pyserve.frontend.openapi).

Their failures are the protocol's `{"error": "..."}`; only a missing or wrong token is
answered by the listener itself, in TorchServe's shape, so a 400 may be either.
"""

from __future__ import annotations

from pyserve.frontend.kserve.tensors import CODES
from pyserve.frontend.openapi import (
    BOOLEAN,
    ERROR,
    JSON,
    MODEL_NAME,
    MODEL_VERSION,
    STRING,
    json_response,
    operation,
)

OIP_ERROR = {"$ref": "#/components/schemas/KServeError"}
ANSWER = ("The model's answer: with service_envelope=kserve (kservev2) the protocol's "
          "response, otherwise the handler's own, as it wrote it (status, headers, body).")


def _object(properties: dict, required: list[str] | None = None) -> dict:
    """An object schema; every property required unless `required` says which."""
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else required}


def kserve_schemas() -> dict:
    parameters = {"type": "object", "additionalProperties": {}}
    tensor = _object({
        "name": STRING,
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": list(CODES)},
        "parameters": parameters,
        "data": {"type": "array"},
    }, required=["name", "shape", "datatype"])
    return {
        "KServeError": _object({"error": {"type": "string", "description": "What went wrong."}}),
        "KServeV2Request": _object({
            "id": STRING, "parameters": parameters,
            "inputs": {"type": "array", "items": tensor, "minItems": 1},
            "outputs": {"type": "array",
                        "items": _object({"name": STRING, "parameters": parameters}, ["name"])},
        }, required=["inputs"]),
    }


def _error(description: str) -> dict:
    return json_response(description, OIP_ERROR)


def _kserve_operation(operation_id: str, summary: str, responses: dict, parameters: list,
                      body: dict | None = None) -> dict:
    described = operation(operation_id, summary, responses, parameters, body=body)
    if "400" in responses:  # the route's own 400, or the listener's token refusal
        described["responses"]["400"]["content"][JSON]["schema"] = {"anyOf": [OIP_ERROR, ERROR]}
    return described


def _inference(operation_id: str, summary: str, parameters: list, body: dict) -> dict:
    responses = {
        "200": {"description": ANSWER},
        "default": {"description": "The handler's answer, with a status of its choosing."},
        "400": _error("Not a request of the protocol: the reason."),
        "404": _error("Model not found, or model version not found."),
        "413": {"description": "Body larger than max_request_size; empty body."},
        "500": _error("Worker died, or the answer cannot be written in the protocol."),
        "503": _error("No worker, the job queue is full, or the handler failed."),
        "507": _error("Out of resources."),
    }
    return {"post": _kserve_operation(operation_id, summary, responses, parameters, body)}


def _read(operation_id: str, summary: str, answer: dict, parameters: list,
          not_ready: str | None = None) -> dict:
    responses = {"200": json_response(summary, answer)}
    if parameters:
        responses["404"] = _error("Model not found, or model version not found.")
    if not_ready:
        responses["503"] = _error(not_ready)
    return {"get": _kserve_operation(operation_id, summary, responses, parameters)}


def kserve_paths() -> dict:
    v1_body = {"description": 'A JSON object, usually {"instances": [...]}, whatever its '
                              "Content-Type.", "required": True,
               "content": {JSON: {"schema": {"type": "object", "properties": {
                   "instances": {"type": "array"}}}}}}
    v2_body = {"description": "The inference request; with Inference-Header-Content-Length, "
                              "followed by the binary tensor data.", "required": True,
               "content": {JSON: {"schema": {"$ref": "#/components/schemas/KServeV2Request"}},
                           "application/octet-stream": {"schema": {"type": "string",
                                                                   "format": "binary"}}}}
    ready = _object({"name": STRING, "ready": BOOLEAN})
    metadata = _object({"name": STRING, "platform": STRING,
                        "inputs": {"type": "array", "items": {"type": "object"}},
                        "outputs": {"type": "array", "items": {"type": "object"}}})
    not_ready = "The model has no worker that can serve it."
    model, versioned = [MODEL_NAME], [MODEL_NAME, MODEL_VERSION]
    return {
        "/v1/models/{model_name}": _read("kserveV1ModelReady", "Whether the model is ready.",
                                         ready, model, not_ready),
        "/v1/models/{model_name}:predict": _inference(
            "kserveV1Predict", "KServe v1 prediction on the default version.", model, v1_body),
        "/v1/models/{model_name}:explain": _inference(
            "kserveV1Explain", "KServe v1 explanation on the default version.", model, v1_body),
        "/v2": _read("kserveV2ServerMetadata", "The server's name, version and extensions.",
                     _object({"name": STRING, "version": STRING,
                              "extensions": {"type": "array", "items": STRING}}), []),
        "/v2/health/live": _read("kserveV2Live", "The server is live.",
                                 _object({"live": BOOLEAN}), []),
        "/v2/health/ready": _read("kserveV2Ready", "Every model has its workers.",
                                  _object({"ready": BOOLEAN}), [],
                                  "A model has fewer live workers than its minimum."),
        "/v2/models/{model_name}": _read("kserveV2ModelMetadata", "The model's metadata.",
                                         metadata, model),
        "/v2/models/{model_name}/ready": _read("kserveV2ModelReady", "Whether the model is ready.",
                                               ready, model, not_ready),
        "/v2/models/{model_name}/infer": _inference(
            "kserveV2Infer", "KServe v2 inference on the default version.", model, v2_body),
        "/v2/models/{model_name}/explain": _inference(
            "kserveV2Explain", "KServe v2 explanation on the default version.", model, v2_body),
        "/v2/models/{model_name}/versions/{model_version}": _read(
            "kserveV2VersionModelMetadata", "The metadata of one version.", metadata, versioned),
        "/v2/models/{model_name}/versions/{model_version}/ready": _read(
            "kserveV2VersionModelReady", "Whether one version is ready.", ready, versioned,
            not_ready),
        "/v2/models/{model_name}/versions/{model_version}/infer": _inference(
            "kserveV2VersionInfer", "KServe v2 inference on one version.", versioned, v2_body),
    }
