"""The inference API: health and predictions, at TorchServe's paths."""

from __future__ import annotations

import uuid

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pyserve.engine import Engine
from pyserve.errors import ServeError
from pyserve.frontend.responses import result_response, serve_error, status_response

PREDICTION_METHODS = ["GET", "POST", "PUT"]


def inference_app(engine: Engine) -> Starlette:
    async def ping(request: Request) -> Response:
        return status_response("Healthy")

    async def predict(request: Request) -> Response:
        params = request.path_params
        model = engine.model(params["model_name"], params.get("model_version"))
        body = await request.body()
        future = engine.infer(
            model,
            str(uuid.uuid4()),
            request.headers.get("content-type", ""),
            request.scope["headers"],
            body,
        )
        return result_response(await future)

    routes = [
        Route("/ping", ping, methods=["GET", "POST"]),
        Route("/predictions/{model_name}", predict, methods=PREDICTION_METHODS),
        Route("/predictions/{model_name}/{model_version}", predict, methods=PREDICTION_METHODS),
    ]
    return Starlette(routes=routes, exception_handlers={ServeError: serve_error})
