"""The OpenAPI 3.0.1 documents each listener serves at `OPTIONS /` and `GET /api-description`.

Each document describes exactly its own listener's routes: every operation, parameter, request
body, status code and response body the server can produce, so that a fuzzer (schemathesis) can
check the server against it. Shared pieces (the error body, the status body, path parameters)
live under `components` and are referred to by `$ref`.

Integer and boolean query parameters of the management API are parsed as TorchServe parses
them: a value that is not an integer (Java's 32-bit parseInt) means the parameter's default, and
only "true" (any case) is true. Their schemas say what a client should send; the server does not
refuse the rest (TorchServe's own tests send `limit=abc` and expect 200).

Responses the server sends without a Content-Type (the handler's own answer, when it set none;
413 with an empty body) are described without `content`: naming a media type there would claim
a header the server does not send.
"""

from __future__ import annotations

import copy

from pyserve import names

JSON = "application/json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
TOKEN_FAILED = "Token authorization is on and the key is missing, wrong or expired (InvalidKeyException)."

ERROR = {"$ref": "#/components/schemas/Error"}
STATUS = {"$ref": "#/components/schemas/Status"}
INTEGER = {"type": "integer"}
INT32 = {"type": "integer", "format": "int32"}
# The most workers one register or scale request may ask for (more: 400). Far above any real
# deployment, far below a fork bomb; TorchServe has no limit and starts them all.
MAX_WORKERS = 1024
WORKERS = {"type": "integer", "format": "int32", "maximum": MAX_WORKERS}
STRING = {"type": "string"}
BOOLEAN = {"type": "boolean"}


# --- schemas -------------------------------------------------------------------------------

def _object(properties: dict, required: list[str] | None = None, **extra) -> dict:
    schema = {"type": "object", "properties": properties, **extra}
    if required is None:
        required = list(properties)
    if required:
        schema["required"] = required
    return schema


def error_schema() -> dict:
    return _object({
        "code": {"type": "integer", "description": "The HTTP status code."},
        "type": {"type": "string", "description": "The error's kind, e.g. ModelNotFoundException."},
        "message": {"type": "string", "description": "What went wrong."},
    })


def status_schema() -> dict:
    return _object({"status": {"type": "string", "description": "What happened, in words."}})


def _base_schemas() -> dict:
    return {
        "Error": error_schema(),
        "Status": status_schema(),
        "ApiDescription": _object(
            {"openapi": STRING, "info": {"type": "object"}, "paths": {"type": "object"}}),
    }


def _model_schemas() -> dict:
    worker = _object({
        "id": {"type": "string", "description": "The worker's id."},
        "startTime": {"type": "string", "description": "yyyy-MM-dd'T'HH:mm:ss.SSS'Z', local time."},
        "status": {"type": "string", "description": "READY, STARTING, UNLOADING, ..."},
        "memoryUsage": {"type": "integer", "description": "Resident memory in bytes."},
        "pid": {"type": "integer", "nullable": True, "description": "null before the process starts."},
        "gpu": BOOLEAN,
        "gpuUsage": {"type": "string", "description": "N/A on CPU."},
    })
    properties = {
        "modelName": STRING, "modelVersion": STRING, "modelUrl": STRING, "runtime": STRING,
        "minWorkers": INTEGER, "maxWorkers": INTEGER, "batchSize": INTEGER,
        "maxBatchDelay": {"type": "integer", "description": "Milliseconds."},
        "responseTimeout": {"type": "integer", "description": "Seconds."},
        "startupTimeout": {"type": "integer", "description": "Seconds."},
        "maxRetryTimeoutInSec": INTEGER, "clientTimeoutInMills": INTEGER,
        "parallelType": STRING, "parallelLevel": INTEGER, "deviceType": STRING,
        "deviceIds": {"type": "array", "items": INTEGER, "description": "Absent unless configured."},
        "continuousBatching": BOOLEAN, "useJobTicket": BOOLEAN, "useVenv": BOOLEAN,
        "stateful": BOOLEAN, "sequenceMaxIdleMSec": INTEGER, "sequenceTimeoutMSec": INTEGER,
        "maxNumSequence": INTEGER, "maxSequenceJobQueueSize": INTEGER, "loadedAtStartup": BOOLEAN,
        "workers": {"type": "array", "items": {"$ref": "#/components/schemas/Worker"}},
        "jobQueueStatus": _object({"remainingCapacity": INTEGER, "pendingRequests": INTEGER}),
        "restarts": {"type": "integer", "description": "pyserve: worker restarts so far."},
        "customizedMetadata": {"description": "The handler's describe_handle() answer; only with "
                                              "customized=true."},
    }
    optional = {"deviceIds", "customizedMetadata"}
    listing = _object({
        "nextPageToken": {"type": "string", "description": "Offset of the next page; absent on the last."},
        "models": {"type": "array", "items": _object({"modelName": STRING, "modelUrl": STRING})},
    }, required=["models"])
    return {
        "Worker": worker,
        "ModelDescription": _object(properties, [name for name in properties if name not in optional]),
        "ModelList": listing,
    }


# --- parameters and bodies -----------------------------------------------------------------

SEGMENT = {"type": "string", "pattern": "^[^/]+$"}  # a "/" would be read as two path segments


def path_parameter(name: str, description: str, schema: dict = SEGMENT) -> dict:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": schema}


MODEL_NAME = path_parameter("model_name", "Name of the model.")
MODEL_VERSION = path_parameter("model_version", "Version of the model.")


def query(name: str, schema: dict, description: str, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema}


def authorization_header() -> dict:
    return {"name": "Authorization", "in": "header", "required": False, "schema": STRING,
            "description": "Bearer <key>, when token authorization is on."}


def inference_body() -> dict:
    fields = {"type": "object", "additionalProperties": {"type": "string", "format": "binary"}}
    return {
        "description": "The model's input, in any format the handler reads; optional.",
        "required": False,
        "content": {
            JSON: {"schema": {}},
            "multipart/form-data": {"schema": fields},
            "application/x-www-form-urlencoded": {"schema": {"type": "object",
                                                             "additionalProperties": STRING}},
            "*/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }


# --- responses and operations --------------------------------------------------------------

def json_response(description: str, schema: dict) -> dict:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def error(description: str) -> dict:
    return json_response(description, ERROR)


def status(description: str) -> dict:
    return json_response(description, STATUS)


def operation(operation_id: str, summary: str, responses: dict, parameters: list | None = None,
              body: dict | None = None, auth: bool = True) -> dict:
    """One operation; `auth` adds the token header and its 400 answer."""
    parameters = list(parameters or [])
    responses = dict(responses)
    if auth:
        parameters.append(authorization_header())
        other = responses.get("400")
        responses["400"] = error(f"{other['description']} Or: {TOKEN_FAILED}" if other else TOKEN_FAILED)
    described = {"operationId": operation_id, "summary": summary, "responses": responses}
    if parameters:
        described["parameters"] = parameters
    if body is not None:
        described["requestBody"] = body
    if auth:
        described["security"] = [{}, {"token": []}]
    return described


def document(title: str, version: str, description: str, paths: dict, schemas: dict,
             auth: bool) -> dict:
    """A listener's document: its paths plus the API description at `/` and `/api-description`."""
    described = json_response("This document.", {"$ref": "#/components/schemas/ApiDescription"})
    components: dict = {"schemas": {**_base_schemas(), **schemas}}
    if auth:
        components["securitySchemes"] = {"token": {
            "type": "http", "scheme": "bearer",
            "description": "The key from key_file.json, when token authorization is on."}}
    return copy.deepcopy({  # the module's shared pieces must not be aliased into the result
        "openapi": "3.0.1",
        "info": {"title": title, "version": version, "description": description},
        "paths": {
            "/": {"options": operation("apiDescription", "This API's OpenAPI document.",
                                       {"200": described}, auth=False)},
            "/api-description": {"get": operation("getApiDescription", "This API's OpenAPI document.",
                                                  {"200": described}, auth=False)},
            **paths,
        },
        "components": components,
    })


# --- inference -----------------------------------------------------------------------------

def _inference_responses() -> dict:
    return {
        "default": {"description": "The handler's answer: it chooses the status (any code), the "
                                   "headers, the Content-Type (none if it sets none) and the body."},
        "400": error("Bad input, e.g. a malformed multipart or form body."),
        "404": error("Model not found, or model version not found."),
        "413": {"description": "Body larger than max_request_size; empty body."},
        "500": error("Worker died, or the handler set an invalid status or a header HTTP "
                     "cannot carry."),
        "503": error("No worker to serve the request, the job queue is full, or the handler failed."),
        "507": error("Out of resources."),
    }


def _inference_operations(stem: str, summary: str, methods: list[str], parameters: list) -> dict:
    return {method: operation(f"{stem}{method.capitalize()}", summary, _inference_responses(),
                              parameters, body=inference_body())
            for method in methods}


def inference_api(version: str) -> dict:
    all_methods = ["get", "post", "put"]
    url_path = path_parameter("url_path", "Extra path segments (may hold \"/\"), handed to the "
                                          "handler as the request header url_path.",
                              {"type": "string", "minLength": 1})
    ping_responses = {"200": status('{"status": "Healthy"}'),
                      "500": status('{"status": "Unhealthy"}: a model has fewer live workers than '
                                    "its minimum.")}
    paths = {
        "/ping": {method: operation(f"ping{method.capitalize()}", "Server health.", ping_responses)
                  for method in ("get", "post")},
        "/predictions/{model_name}": _inference_operations(
            "predictions", "Inference on the model's default version.", all_methods, [MODEL_NAME]),
        "/predictions/{model_name}/{model_version}": _inference_operations(
            "versionPredictions", "Inference on one version of the model.", all_methods,
            [MODEL_NAME, MODEL_VERSION]),
        "/predictions/{model_name}/{model_version}/{url_path}": _inference_operations(
            "versionPredictionsPath", "Inference on one version, with extra path segments.",
            all_methods, [MODEL_NAME, MODEL_VERSION, url_path]),
        "/explanations/{model_name}": _inference_operations(
            "explanations", "Explanation on the default version (request header explain: True).",
            ["post"], [MODEL_NAME]),
        "/explanations/{model_name}/{model_version}": _inference_operations(
            "versionExplanations", "Explanation on one version of the model.", ["post"],
            [MODEL_NAME, MODEL_VERSION]),
    }
    # Imported here: pyserve.frontend.kserve.openapi builds on this module's helpers.
    from pyserve.frontend.kserve.openapi import kserve_paths, kserve_schemas

    return document("pyserve inference API", version,
                    "Predictions, explanations and health (TorchServe's inference API), and "
                    "KServe v1 and v2 (the Open Inference Protocol).",
                    {**paths, **kserve_paths()}, kserve_schemas(), auth=True)


# --- management ----------------------------------------------------------------------------

MODEL_NAME_VALUE = {"type": "string", "pattern": f"^{names.MODEL_NAME.pattern}$",
                    "maxLength": names.MAX_MODEL_NAME_LENGTH}


def _register_body() -> dict:
    properties = {
        "url": STRING, "model_name": MODEL_NAME_VALUE, "handler": STRING,
        "runtime": {"type": "string", "enum": ["python", "python3"]},
        "batch_size": INT32, "max_batch_delay": INT32, "initial_workers": WORKERS,
        "synchronous": BOOLEAN, "response_timeout": INT32, "startup_timeout": INT32,
    }
    return {"description": "The query parameters' keys as a JSON object; they override the query. "
                           "Other keys are ignored; null means absent.",
            "required": False,
            "content": {JSON: {"schema": _object(properties, required=[])}}}


def _register_parameters() -> list:
    return [
        query("url", STRING, "Archive file name or folder in the model store, or an allowed URL. "
                             "A JSON body's url overrides it.", required=True),
        query("model_name", MODEL_NAME_VALUE, "Overrides the manifest's model name."),
        query("handler", STRING, "Overrides the manifest's handler."),
        query("runtime", {"type": "string", "enum": ["python", "python3"]}, "Worker runtime."),
        query("batch_size", INT32, "Largest batch."),
        query("max_batch_delay", INT32, "Longest wait for a batch to fill, in ms."),
        query("initial_workers", WORKERS, f"Workers to start, at most {MAX_WORKERS}."),
        query("synchronous", {"type": "boolean", "default": True}, "Wait for the workers to start."),
        query("response_timeout", INT32, "Seconds a worker may take to answer."),
        query("startup_timeout", INT32, "Seconds a worker may take to load the model."),
    ]


def _model_operations(parameters: list, id_suffix: str, which: str) -> dict:
    """Describe, scale and unregister, at `/models/{model_name}` or `.../{model_version}`."""
    not_found = error("Model not found, or model version not found.")
    scale_parameters = [
        query("min_worker", WORKERS, f"Minimum number of workers (default 1), at most {MAX_WORKERS}."),
        query("max_worker", INT32, "Maximum number of workers (default: min_worker)."),
        query("synchronous", {"type": "boolean", "default": False}, "Wait for the workers."),
        query("timeout", INT32, "Accepted and ignored."),
    ]
    if MODEL_VERSION not in parameters:  # no version in the path: the query may name one
        scale_parameters.append(query("model_version", STRING, "The version to scale."))
    models = {"type": "array", "items": {"$ref": "#/components/schemas/ModelDescription"}}
    return {
        "get": operation(f"describe{id_suffix}", f"Describe {which}.", {
            "200": json_response("One object per version described.", models),
            "404": not_found,
            "503": error("customized=true and the model has no worker to ask."),
        }, [*parameters, query("customized", {"type": "boolean", "default": False},
                               "Add the handler's customizedMetadata.")]),
        "put": operation(f"scale{id_suffix}", f"Scale the workers of {which}.", {
            "200": status("Workers scaled (synchronous)."),
            "202": status("Processing worker updates... (asynchronous)."),
            "206": status("Workers scaling in progress..."),
            "400": error("max_worker is less than min_worker, or min_worker is negative or more "
                         f"than {MAX_WORKERS}."),
            "404": not_found,
            "500": error("Failed to start workers."),
        }, [*parameters, *scale_parameters]),
        "delete": operation(f"unregister{id_suffix}", f"Unregister {which}.", {
            "200": status("Model unregistered."),
            "403": error("Cannot remove the default version while others exist "
                         "(InvalidModelVersionException)."),
            "404": not_found,
            "405": error("The model API is disabled (enable_model_api)."),
            "408": error("Timed out while cleaning resources."),
        }, [*parameters, query("synchronous", BOOLEAN, "Accepted and ignored."),
            query("timeout", INT32, "Accepted and ignored.")]),
    }


def management_api(version: str) -> dict:
    register_responses = {
        "200": status('Registered, e.g. Model "x" Version: 1.0 registered with 1 initial workers.'),
        "202": status("Processing worker updates... (asynchronous)."),
        "400": error("Missing url, bad runtime, bad archive, download failure, an invalid model "
                     f"name, more than {MAX_WORKERS} initial workers, or a JSON body that is not "
                     "an object of strings, numbers and booleans."),
        "404": error("Archive not found, or URL not allowed."),
        "405": error("The model API is disabled (enable_model_api)."),
        "409": error("This model version is already registered, or a file of the downloaded "
                     "archive's name is already in the model store."),
        "500": error("Workers failed to start."),
        "507": error("Out of resources."),
    }
    list_parameters = [
        query("limit", {"type": "integer", "format": "int32", "default": 100},
              "Page size (at most 100; more, less than 0 or not an integer: 100)."),
        query("next_page_token", STRING, "Offset of the page, an integer, from nextPageToken."),
    ]
    paths = {
        "/models": {
            "get": operation("listModels", "List registered models (default versions).",
                             {"200": json_response("A page of models.",
                                                   {"$ref": "#/components/schemas/ModelList"})},
                             list_parameters),
            "post": operation("registerModel", "Register a model archive.", register_responses,
                              _register_parameters(), body=_register_body()),
        },
        "/models/{model_name}": _model_operations([MODEL_NAME], "Model", "the default version"),
        "/models/{model_name}/{model_version}": _model_operations(
            [MODEL_NAME, MODEL_VERSION], "ModelVersion",
            'one version ("all": every version, for describe)'),
        "/models/{model_name}/{model_version}/set-default": {
            "put": operation("setDefaultVersion", "Make a version the model's default.", {
                "200": status("Default version successfully updated."),
                "404": error("Model not found, or model version not found."),
            }, [MODEL_NAME, MODEL_VERSION]),
        },
        "/token": {
            "get": operation("regenerateToken", "Regenerate the management or inference key.", {
                "200": json_response("Regenerated: an empty object.",
                                     {"type": "object", "additionalProperties": False}),
                "400": error("Missing or invalid type, or a bad API key."),
                "404": error("Token authorization is off: there is no key to regenerate."),
            }, [query("type", {"type": "string", "enum": ["management", "inference"]},
                      "Which key to regenerate.", required=True)]),
        },
    }
    return document("pyserve management API", version,
                    "Register, list, describe, scale and unregister models (TorchServe's "
                    "management API).", paths, _model_schemas(), auth=True)


# --- metrics -------------------------------------------------------------------------------

def metrics_api(version: str) -> dict:
    names = {"name": "name[]", "in": "query", "required": False, "style": "form", "explode": True,
             "description": "Only these metric families.",
             "schema": {"type": "array", "items": STRING}}
    scrape = operation("metrics", "Metrics in Prometheus text format 0.0.4.", {
        "200": {"description": "Prometheus text format.",
                "content": {PROMETHEUS: {"schema": {"type": "string"}}}},
    }, [names], auth=False)
    return document("pyserve metrics API", version, "Prometheus metrics.",
                    {"/metrics": {"get": scrape}}, {}, auth=False)
