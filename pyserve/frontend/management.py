"""The management API, at TorchServe's paths: register, scale, list, describe, unregister,
set the default version.

Parameters are parsed as TorchServe parses them: a non-integer count (Java's parseInt: one
outside the 32-bit range is not an integer either) falls back to the default, and only
"true" (any case) is true. Register and unregister answer 405 unless the model API is
enabled, as in TorchServe 0.12.

Bad input is refused with 400 where TorchServe would fail later or never: a JSON body whose
values are not strings, numbers or booleans (or that is nested too deeply to parse), a model
name outside pyserve.names' rule (a "/" in it, and no path could reach the model), and a
worker count above MAX_WORKERS (TorchServe tries to start them all; one request could start
millions of processes).
"""

from __future__ import annotations

import json
from dataclasses import replace

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pyserve.config import Settings
from pyserve.engine import Engine
from pyserve.engine.loading import RUNTIMES, RegisterOptions
from pyserve.engine.models import ModelVersion
from pyserve.engine.pool import load_failure_code
from pyserve.errors import BadRequest, ServeError
from pyserve.frontend.describe import describe_model
from pyserve.frontend.http import (NOT_FOUND, MethodNotAllowed, json_response, listener_app,
                                   read_body, status_response)
from pyserve.frontend.openapi import MAX_WORKERS, management_api
from pyserve.frontend.tokens import AUTHENTICATION_FAILED, TokenKeys
from pyserve.names import check_model_name

MAX_PAGE = 100
INT_MIN, INT_MAX = -2**31, 2**31 - 1  # Java's int: TorchServe parses counts with parseInt
REGISTER_PARAMETERS = ("url", "model_name", "handler", "runtime", "batch_size", "max_batch_delay",
                       "initial_workers", "synchronous", "response_timeout", "startup_timeout")


def as_int(value, default: int | None) -> int | None:
    if isinstance(value, bool):
        return default
    if not isinstance(value, int):
        try:
            value = int(str(value).strip())
        except (TypeError, ValueError):  # also: more digits than Python converts
            return default
    return value if INT_MIN <= value <= INT_MAX else default


def as_bool(value, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() == "true"


def _json_parameter(name: str, value) -> str | None:
    """A JSON body's value as the query string would carry it: scalars as text, null as absent."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)  # true, 5, 2.5: what Gson's getAsString gives TorchServe
    raise BadRequest(f"Parameter {name} must be a string, a number or a boolean")


def query(request: Request) -> dict[str, str]:
    """The query string's parameters, the first value of each as TorchServe reads them
    (Starlette's own mapping keeps the last)."""
    params: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        params.setdefault(name, value)
    return params


async def _parameters(request: Request, limit: int) -> dict:
    """Query parameters, overlaid by a JSON body's keys when the body is JSON (at most
    `limit` bytes, like any request body)."""
    params = query(request)
    if request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
        body = await read_body(request.receive, request.headers.get("content-length"), limit)
        if body.strip():
            try:
                document = json.loads(body)
            except ValueError:  # also UnicodeDecodeError: the body is not UTF-8
                raise BadRequest("Request body is not valid JSON") from None
            except RecursionError:
                raise BadRequest("Request body is nested too deeply") from None
            if not isinstance(document, dict):
                raise BadRequest("Request body must be a JSON object")
            for name in REGISTER_PARAMETERS:  # other keys are ignored, as TorchServe does
                if name in document:
                    value = _json_parameter(name, document[name])
                    if value is None:
                        params.pop(name, None)
                    else:
                        params[name] = value
    return params


def _worker_count(name: str, value: int) -> int:
    if value > MAX_WORKERS:
        raise BadRequest(f"{name} cannot be more than {MAX_WORKERS}.")
    return value


# The operations themselves, shared with the gRPC management API (pyserve.grpc.management):
# each transport parses its own parameters and renders the outcome its own way.

async def register_model(engine: Engine, url: str | None, options: RegisterOptions,
                         synchronous: bool) -> tuple[int, str]:
    """Registers the archive at `url`; (HTTP status, message) as TorchServe answers."""
    if url is None:
        raise BadRequest("Parameter url is required.")
    if options.runtime is not None and options.runtime not in RUNTIMES:
        raise BadRequest(f"Invalid RuntimeType value: {options.runtime}")
    if options.initial_workers is not None:
        options = replace(options, initial_workers=max(
            _worker_count("initial_workers", options.initial_workers), 0))
    if options.model_name is not None:
        check_model_name(options.model_name)  # before the archive is fetched and unpacked
    model = await engine.register(str(url), options, synchronous=synchronous)
    if not synchronous:
        return 202, "Processing worker updates..."
    workers = model.config.min_workers
    message = f'Model "{model.name}" Version: {model.version} registered with {workers} initial workers'
    if workers == 0:
        message += ". Use scale workers API to add workers for the model."
    return 200, message


def model_list(engine: Engine, limit: int, offset: int) -> dict:
    """One page of the registered models, in name order."""
    names = sorted(engine.models)
    page = names[offset:offset + limit]
    listing: dict = {}
    if offset + limit < len(names):
        listing["nextPageToken"] = str(offset + limit)
    listing["models"] = [{"modelName": name, "modelUrl": engine.model(name).url} for name in page]
    return listing


async def describe_models(engine: Engine, name: str, version: str | None,
                          customized: bool) -> list[dict]:
    """The model's default version, `version`, or with "all" every version, described."""
    if version == "all":
        engine.model(name)  # 404 when unknown
        versions = [engine.models[name][v] for v in sorted(engine.models[name])]
    else:
        versions = [engine.model(name, version)]
    described = [describe_model(model, engine.core.queued(model.core_id)) for model in versions]
    if customized:
        for model, entry in zip(versions, described):
            entry["customizedMetadata"] = await _custom_metadata(engine, model)
    return described


async def _custom_metadata(engine: Engine, model: ModelVersion):
    """What the handler's describe_handle says, asked for as TorchServe asks."""
    if not model.live_workers():
        raise ServeError(503, "ServiceUnavailableException",
                         f'Model "{model.name}" has no worker to serve describe request. '
                         "Please use scale workers API to add workers.")
    result = await engine.infer(model, "describe", "", [(b"describe", b"True")], b"")[1]
    try:
        return json.loads(result.body)
    except ValueError:
        return result.body.decode("utf-8", errors="replace")


async def scale_workers(engine: Engine, name: str, version: str | None, min_worker: int,
                        max_worker: int, synchronous: bool) -> tuple[int, str]:
    """Scales the model's workers; (HTTP status, message) as TorchServe answers."""
    model = engine.model(name, version)
    if min_worker < 0:
        raise BadRequest("min_worker cannot be negative.")
    if max_worker < min_worker:
        raise BadRequest("max_worker cannot be less than min_worker.")
    _worker_count("min_worker", min_worker)
    failed = await engine.scale(model, min_worker, max_worker, synchronous)
    if not synchronous:
        return 202, "Processing worker updates..."
    if failed is not None:
        raise ServeError(load_failure_code(failed), "InternalServerException",
                         f"Failed to start workers for model {name} version: {version or 'null'}")
    if len(model.ready_workers()) < min_worker:
        return 206, "Workers scaling in progress..."
    suffix = f", version: {version}" if version else ""
    return 200, f"Workers scaled to {min_worker} for model: {name}{suffix}"


async def unregister_model(engine: Engine, settings: Settings, name: str,
                           version: str | None) -> str:
    model = engine.model(name, version)
    if engine.is_default(model) and len(engine.models[name]) > 1:
        raise ServeError(403, "InvalidModelVersionException",
                         f"Cannot remove default version for model {name}")
    await engine.unregister(model, settings.unregister_model_timeout)
    return f'Model "{name}" unregistered'


async def set_default_version(engine: Engine, name: str, version: str) -> str:
    engine.set_default(name, version)
    await engine.settle()
    return f'Default version successfully updated for model "{name}" to "{version}"'


def management_app(engine: Engine, settings: Settings, version: str,
                   tokens: TokenKeys | None = None):
    async def models(request: Request) -> Response:
        if request.method == "POST":
            return await register(request)
        return list_models(request)

    async def register(request: Request) -> Response:
        if not settings.enable_model_api:
            raise MethodNotAllowed()
        params = await _parameters(request, settings.max_request_size)
        options = RegisterOptions(
            model_name=params.get("model_name") or None,
            handler=params.get("handler") or None,
            runtime=params.get("runtime"),
            batch_size=as_int(params.get("batch_size"), None),
            max_batch_delay=as_int(params.get("max_batch_delay"), None),
            initial_workers=as_int(params.get("initial_workers"), None),
            response_timeout=as_int(params.get("response_timeout"), None),
            startup_timeout=as_int(params.get("startup_timeout"), None),
        )
        status, message = await register_model(engine, params.get("url"), options,
                                               as_bool(params.get("synchronous"), True))
        return status_response(message, status)

    def list_models(request: Request) -> Response:
        params = query(request)
        limit = as_int(params.get("limit"), MAX_PAGE)
        limit = MAX_PAGE if limit > MAX_PAGE or limit < 0 else limit
        offset = max(as_int(params.get("next_page_token"), 0), 0)
        return json_response(model_list(engine, limit, offset))

    async def model_resource(request: Request) -> Response:
        name = request.path_params["model_name"]
        version = request.path_params.get("model_version")
        if request.method == "GET":
            return await describe(request, name, version)
        if request.method == "PUT":
            return await scale(request, name, version or query(request).get("model_version"))
        return await unregister(name, version)

    async def describe(request: Request, name: str, version: str | None) -> Response:
        customized = as_bool(query(request).get("customized"), False)
        return json_response(await describe_models(engine, name, version, customized))

    async def scale(request: Request, name: str, version: str | None) -> Response:
        params = query(request)
        min_worker = as_int(params.get("min_worker"), 1)
        status, message = await scale_workers(
            engine, name, version, min_worker, as_int(params.get("max_worker"), min_worker),
            as_bool(params.get("synchronous"), False))
        return status_response(message, status)

    async def unregister(name: str, version: str | None) -> Response:
        if not settings.enable_model_api:
            raise MethodNotAllowed()
        return status_response(await unregister_model(engine, settings, name, version))

    async def set_default(request: Request) -> Response:
        name, version = request.path_params["model_name"], request.path_params["model_version"]
        return status_response(await set_default_version(engine, name, version))

    async def regenerate_token(request: Request) -> Response:
        if tokens is None:  # TorchServe has no /token route while token authorization is off
            raise ServeError(404, "ResourceNotFoundException", NOT_FOUND)
        kind = query(request).get("type")
        if kind not in ("management", "inference"):
            raise ServeError(400, "InvalidKeyException", AUTHENTICATION_FAILED)
        tokens.regenerate(kind)
        engine.on_change()
        await engine.settle()  # the new inference key is in force everywhere when this answers
        return json_response({})

    routes = [
        Route("/token", regenerate_token, methods=["GET"]),
        Route("/models", models, methods=["GET", "POST"]),
        Route("/models/{model_name}", model_resource, methods=["GET", "PUT", "DELETE"]),
        Route("/models/{model_name}/{model_version}", model_resource, methods=["GET", "PUT", "DELETE"]),
        Route("/models/{model_name}/{model_version}/set-default", set_default, methods=["PUT"]),
    ]
    return listener_app(routes, lambda: management_api(version), engine.metrics, tokens, "management")
