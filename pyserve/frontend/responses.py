"""Responses in TorchServe's shapes: JSON errors, status messages, and handler results."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from pyserve.errors import ServeError, error_body, status_body
from pyserve.protocol import Result

JSON = "application/json"


def error_response(code: int, type: str, message: str) -> Response:
    return Response(error_body(code, type, message), status_code=code, media_type=JSON)


def status_response(message: str, status_code: int = 200) -> Response:
    return Response(status_body(message), status_code=status_code, media_type=JSON)


async def serve_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ServeError)
    return error_response(error.code, error.type, error.message)


def result_response(result: Result) -> Response:
    status = result.status
    if not 100 <= status <= 599:
        return error_response(
            500, "InternalServerException", f"Handler set an invalid HTTP status: {status}"
        )
    response = Response(result.body, status_code=status)
    headers = response.headers
    if result.content_type is not None:
        headers["content-type"] = result.content_type
    for name, value in result.headers:
        headers[name] = value
    return response
