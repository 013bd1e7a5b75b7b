"""How the KServe routes answer: JSON bodies, `{"error": "..."}` for every failure (the
protocol's error object, which clients such as tritonclient read), and otherwise the
handler's answer as it wrote it."""

from __future__ import annotations

import json

from starlette.responses import Response

from pyserve.errors import ServeError
from pyserve.frames import Result

JSON = "application/json"


def json_response(content: dict, status_code: int = 200) -> Response:
    return Response(json.dumps(content, separators=(",", ":")).encode(), status_code,
                    media_type=JSON)


def error_response(code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps({"error": message}).encode(), code, headers=headers,
                    media_type=JSON)


def serve_error(error: ServeError) -> Response:
    """A pyserve error (unknown model, no worker, full queue, ...) with its status and headers."""
    return error_response(error.code, error.message, error.headers)


def failure_message(result: Result) -> str:
    """A worker's error message: TorchServe's {"code", "type", "message"}'s, or whatever the
    handler wrote."""
    message = result.body.decode("utf-8", errors="replace")
    try:
        document = json.loads(result.body)
    except (ValueError, RecursionError):
        document = None
    if isinstance(document, dict) and isinstance(document.get("message"), str):
        message = document["message"]
    return message


def failed_answer(result: Result) -> Response:
    """A worker's error as the protocol's error object, its status kept."""
    return error_response(result.status, failure_message(result))
