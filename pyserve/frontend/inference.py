"""The inference API, at TorchServe's paths: predictions, explanations, health.

`/predictions/{model}[/{version}[/extra/segments]]` runs the model; extra segments reach
the handler as the request header `url_path`, and `/explanations/...` sets `explain` to
"True", as TorchServe does; KServe v1 and v2 have routes of their own (pyserve.frontend.kserve).
Predictions are served by pyserve.frontend.predictions before Starlette sees them; the
Starlette routes below answer the same way for every other method and path.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pyserve.config import Settings
from pyserve.frontend.hangup import hangup_of
from pyserve.frontend.http import REQUEST_ID, listener_app, read_body, status_response
from pyserve.frontend.kserve import kserve_routes
from pyserve.frontend.openapi import inference_api
from pyserve.frontend.predictions import FastPredictions, Predictor, handler_response
from pyserve.frontend.tokens import KeyCheck
from pyserve.serving.directory import Directory

PREDICTION_METHODS = ["GET", "POST", "PUT"]


def inference_app(directory: Directory, settings: Settings, version: str, tokens: KeyCheck | None = None):
    """`directory`: the engine itself in the server process, its replica in a frontend process."""
    predictor = Predictor(directory)
    limit = settings.max_request_size

    async def ping(request: Request) -> Response:
        return status_response("Healthy") if directory.healthy() else status_response("Unhealthy", 500)

    async def run(request: Request, explain: bool) -> Response:
        params = request.path_params
        body = await read_body(request.receive, request.headers.get("content-length"), limit)
        answer = await predictor.predict(
            params["model_name"], params.get("model_version"), params.get("url_path", ""), explain,
            request.scope[REQUEST_ID], request.scope["headers"],
            request.headers.get("content-type", ""), body, hangup_of(request.scope),
        )
        return handler_response(answer)

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
        *kserve_routes(predictor, directory, settings, version),
    ]
    starlette = listener_app(routes, lambda: inference_api(version), directory.metrics, tokens, "inference")
    return FastPredictions(predictor, starlette, limit, tokens)
