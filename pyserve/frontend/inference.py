"""The inference API, at TorchServe's paths: predictions, explanations, health.

`/predictions/{model}[/{version}[/extra/segments]]` runs the model; extra segments reach
the handler as the request header `url_path`, and `/explanations/...` sets `explain` to
"True", as TorchServe does. KServe-style v1/v2 paths map to the same thing.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pyserve.config import Settings
from pyserve.engine import Engine
from pyserve.frontend.http import REQUEST_ID, error_response, listener_app, read_body, status_response
from pyserve.frontend.openapi import inference_api
from pyserve.frontend.tokens import TokenKeys
from pyserve.protocol import Result

PREDICTION_METHODS = ["GET", "POST", "PUT"]


def result_response(result: Result) -> Response:
    """The handler's answer as it set it: status, content type (none if unset), headers, body."""
    if not 100 <= result.status <= 599:
        return error_response(
            500, "InternalServerException", f"Handler set an invalid HTTP status: {result.status}"
        )
    response = Response(result.body, status_code=result.status)
    headers = response.headers
    if result.content_type is not None:
        headers["content-type"] = result.content_type
    for name, value in result.headers:
        headers[name] = value
    return response


def inference_app(engine: Engine, settings: Settings, version: str, tokens: TokenKeys | None = None):
    metrics = engine.metrics
    limit = settings.max_request_size

    async def ping(request: Request) -> Response:
        for name, default in engine.default_versions.items():
            model = engine.models[name][default]
            if model.config.min_workers > 0 and not model.live_workers():
                return status_response("Unhealthy", 500)
        return status_response("Healthy")

    async def run(request: Request, explain: bool) -> Response:
        arrival = time.monotonic_ns()
        params = request.path_params
        name, version_in_path = params["model_name"], params.get("model_version")
        model = engine.model(name, version_in_path)
        stats = metrics.request_stats(name, version_in_path or "default")
        stats.requests += 1  # TorchServe counts a request once accepted, even if it then fails
        body = await read_body(request, limit)
        headers = [
            *request.scope["headers"],
            (b"url_path", params.get("url_path", "").encode()),
            (b"explain", b"True" if explain else b"False"),
        ]
        result = await engine.infer(
            model, request.scope[REQUEST_ID], request.headers.get("content-type", ""), headers, body
        )
        stats.latency_us += (time.monotonic_ns() - arrival) / 1000
        if result.started_ns:
            stats.queue_latency_us += max(result.started_ns - arrival, 0) / 1000
        return result_response(result)

    async def predict(request: Request) -> Response:
        return await run(request, explain=False)

    async def explain(request: Request) -> Response:
        return await run(request, explain=True)

    routes = [
        Route("/ping", ping, methods=["GET", "POST"]),
        Route("/predictions/{model_name}", predict, methods=PREDICTION_METHODS),
        Route("/predictions/{model_name}/{model_version}", predict, methods=PREDICTION_METHODS),
        Route("/predictions/{model_name}/{model_version}/{url_path:path}", predict,
              methods=PREDICTION_METHODS),
        Route("/explanations/{model_name}", explain, methods=["POST"]),
        Route("/explanations/{model_name}/{model_version}", explain, methods=["POST"]),
        Route("/v1/models/{model_name}:predict", predict, methods=["POST"]),
        Route("/v1/models/{model_name}:explain", explain, methods=["POST"]),
        Route("/v2/models/{model_name}/infer", predict, methods=["POST"]),
        Route("/v2/models/{model_name}/explain", explain, methods=["POST"]),
    ]
    return listener_app(routes, lambda: inference_api(version), metrics, tokens, "inference")
