"""KServe v2, the Open Inference Protocol, over REST: health, metadata and inference.

`POST /v2/models/{model}[/versions/{version}]/infer` takes the JSON inference request, or
JSON followed by binary tensor data (Inference-Header-Content-Length). The tensors are
checked and handed to the model as one JSON document (pyserve.frontend.kserve.tensors);
with `service_envelope=kservev2` the worker's envelope turns them into the handler's rows and
its answers into outputs, which go back as the request asked: only the outputs it named,
binary where it asked for binary. Every failure is `{"error": "..."}`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pyserve.errors import ServeError
from pyserve.frames import Result
from pyserve.frontend.hangup import hangup_of
from pyserve.frontend.http import REQUEST_ID, read_body
from pyserve.frontend.kserve.responses import (
    JSON,
    error_response,
    failed_answer,
    json_response,
    serve_error,
)
from pyserve.frontend.kserve.tensors import (
    InferRequest,
    TensorError,
    read_request,
    write_response,
)
from pyserve.frontend.predictions import Predictor, handler_response, result_headers
from pyserve.serving.directory import Directory
from pyserve.serving.streamed import Streamed

HEADER_LENGTH = b"inference-header-content-length"
EXTENSIONS = ["binary_tensor_data"]


def _response(answer: Result | Streamed, request: InferRequest) -> Response:
    """The model's answer as the request asked for it, or as the handler wrote it when it is
    no inference response (streamed, or from a handler without the envelope)."""
    if isinstance(answer, Streamed):
        return handler_response(answer)
    if answer.status >= 400:
        return failed_answer(answer)
    written = write_response(answer.body, request)
    if written is None:
        return handler_response(answer)
    body, json_length = written
    status, headers = result_headers(answer)
    headers = [(key, value) for key, value in headers
               if key.lower() not in (b"content-type", b"content-length")]
    headers.append((b"content-length", str(len(body)).encode()))
    if json_length is None:
        headers.append((b"content-type", JSON.encode()))
    else:
        headers += [(b"content-type", b"application/octet-stream"),
                    (HEADER_LENGTH, str(json_length).encode())]
    response = Response(body, status_code=status)
    response.raw_headers = headers
    return response


def v2_routes(predictor: Predictor, directory: Directory, max_request_size: int,
              server_version: str) -> list[Route]:
    async def metadata(request: Request) -> Response:
        return json_response({"name": "pyserve", "version": server_version,
                              "extensions": EXTENSIONS})

    async def live(request: Request) -> Response:
        return json_response({"live": True})

    async def ready(request: Request) -> Response:
        if not directory.healthy():
            return error_response(503, "Server is not ready.")
        return json_response({"ready": True})

    async def model_metadata(request: Request) -> Response:
        params = request.path_params
        try:
            model = directory.model(params["model_name"], params.get("model_version"))
        except ServeError as error:
            return serve_error(error)
        return json_response({"name": model.name, "platform": "", "inputs": [], "outputs": []})

    async def model_ready(request: Request) -> Response:
        params = request.path_params
        try:
            model = directory.model(params["model_name"], params.get("model_version"))
        except ServeError as error:
            return serve_error(error)
        if not model.can_serve():
            return error_response(503, f"Model with name {model.name} is not ready.")
        return json_response({"name": model.name, "ready": True})

    async def run(request: Request, explain: bool) -> Response:
        params = request.path_params
        name, version = params["model_name"], params.get("model_version")
        try:
            directory.model(name, version)
            body = await read_body(request.receive, request.headers.get("content-length"),
                                   max_request_size)
            tensors = read_request(body, request.headers.get(HEADER_LENGTH.decode()))
            # the worker gets the request as JSON alone: its binary part's length is no more
            headers = [(key, value) for key, value in request.scope["headers"]
                       if key != HEADER_LENGTH]
            answer = await predictor.predict(name, version, "", explain, request.scope[REQUEST_ID],
                                             headers, JSON, tensors.body,
                                             hangup_of(request.scope))
            return _response(answer, tensors)
        except ServeError as error:
            return serve_error(error)
        except TensorError as error:
            return error_response(error.code, error.message)

    async def infer(request: Request) -> Response:
        return await run(request, explain=False)

    async def explain(request: Request) -> Response:
        return await run(request, explain=True)

    model = "/v2/models/{model_name}"
    versioned = "/v2/models/{model_name}/versions/{model_version}"
    return [
        Route("/v2", metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route(model, model_metadata, methods=["GET"]),
        Route(f"{model}/ready", model_ready, methods=["GET"]),
        Route(f"{model}/infer", infer, methods=["POST"]),
        Route(f"{model}/explain", explain, methods=["POST"]),
        Route(versioned, model_metadata, methods=["GET"]),
        Route(f"{versioned}/ready", model_ready, methods=["GET"]),
        Route(f"{versioned}/infer", infer, methods=["POST"]),
    ]
