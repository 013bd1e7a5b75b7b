"""KServe v1 over REST, as KServe's model server answers in front of TorchServe.

`POST /v1/models/{model}:predict` (`:explain`) takes a JSON object, `{"instances": [...]}`,
and answers what the model answers: `{"predictions": [...]}` (`{"explanations": [...]}`)
with `service_envelope=kserve`. `GET /v1/models/{model}` says whether the model is ready.
Every failure is `{"error": "..."}`.
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pyserve.errors import ServeError
from pyserve.frontend.hangup import hangup_of
from pyserve.frontend.http import REQUEST_ID, read_body
from pyserve.frontend.kserve.responses import (
    JSON,
    error_response,
    failed_answer,
    json_response,
    serve_error,
)
from pyserve.frontend.predictions import Predictor, handler_response
from pyserve.serving.directory import Directory
from pyserve.serving.streamed import Streamed


def _check_body(body: bytes) -> str | None:
    """Why `body` is not a KServe v1 request, or None."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:
        return f"Unrecognized request format: {error}"
    if not isinstance(document, dict):
        return "Unrecognized request format: the body must be a JSON object"
    if "instances" in document and not isinstance(document["instances"], list):
        return 'Expected "instances" to be a list'
    return None


def v1_routes(predictor: Predictor, directory: Directory, max_request_size: int) -> list[Route]:
    async def ready(request: Request) -> Response:
        name = request.path_params["model_name"]
        try:
            model = directory.model(name)
        except ServeError as error:
            return serve_error(error)
        if not model.can_serve():
            return error_response(503, f"Model with name {name} is not ready.")
        return json_response({"name": name, "ready": True})

    async def run(request: Request, explain: bool) -> Response:
        name = request.path_params["model_name"]
        try:
            directory.model(name)
            body = await read_body(request.receive, request.headers.get("content-length"),
                                   max_request_size)
            problem = _check_body(body)
            if problem is not None:
                return error_response(400, problem)
            answer = await predictor.predict(name, None, "", explain, request.scope[REQUEST_ID],
                                             request.scope["headers"], JSON, body,
                                             hangup_of(request.scope))
            if not isinstance(answer, Streamed) and answer.status >= 400:
                return failed_answer(answer)
            return handler_response(answer)
        except ServeError as error:
            return serve_error(error)

    async def predict(request: Request) -> Response:
        return await run(request, explain=False)

    async def explain(request: Request) -> Response:
        return await run(request, explain=True)

    return [  # ":predict" first: a path ending in it is a prediction, whatever its method
        Route("/v1/models/{model_name}:predict", predict, methods=["POST"]),
        Route("/v1/models/{model_name}:explain", explain, methods=["POST"]),
        Route("/v1/models/{model_name}", ready, methods=["GET"]),
    ]
