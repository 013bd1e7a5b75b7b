"""What every listener shares: TorchServe's response headers, error bodies, JSON and body limits.

Each response carries TorchServe's headers (a fresh x-request-id, no-cache headers); an
unknown path answers 404 and a wrong method 405 with TorchServe's bodies. The headers are
added by a small ASGI wrapper rather than Starlette middleware, which costs far more per
request.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from pyserve.errors import ServeError, error_body
from pyserve.frontend.tokens import KeyCheck, RequireToken
from pyserve.metrics import ServerMetrics

JSON = "application/json"
REQUEST_ID = "pyserve.request_id"  # the scope key holding this request's x-request-id
NOT_FOUND = "Requested resource is not found, please refer to API document."
NOT_ALLOWED = "Requested method is not allowed, please refer to API document."
NO_CACHE_HEADERS = (
    (b"pragma", b"no-cache"),
    (b"cache-control", b"no-cache; no-store, must-revalidate, private"),
    (b"expires", b"Thu, 01 Jan 1970 00:00:00 UTC"),
)


def json_response(content: Any, status_code: int = 200) -> Response:
    """JSON as TorchServe writes it (Gson): two-space indent and a trailing newline."""
    return Response((json.dumps(content, indent=2) + "\n").encode(), status_code, media_type=JSON)


def status_response(message: str, status_code: int = 200) -> Response:
    return json_response({"status": message}, status_code)


def error_response(code: int, type: str, message: str) -> Response:
    return Response(error_body(code, type, message), code, media_type=JSON)


class MethodNotAllowed(ServeError):
    def __init__(self):
        super().__init__(405, "MethodNotAllowedException", NOT_ALLOWED)


class BodyTooLarge(Exception):
    """The request body exceeds max_request_size; answered 413 with an empty body, and the
    connection closed."""


async def read_body(receive, declared: str | bytes | None, limit: int) -> bytes:
    """The whole body from an ASGI `receive`. BodyTooLarge over `limit` (before reading any
    of it when its Content-Length is `declared`), ClientDisconnect if the client left first,
    so that a body cut short is never taken for a whole one."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge()
    chunks = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
        if not message.get("more_body"):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def serve_error_response(error: ServeError) -> Response:
    """A pyserve error as TorchServe answers it: {"code", "type", "message"}, its headers."""
    response = error_response(error.code, error.type, error.message)
    response.headers.update(error.headers)
    return response


async def _serve_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ServeError)
    return serve_error_response(error)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    if error.status_code == 405:
        response = error_response(405, "MethodNotAllowedException", NOT_ALLOWED)
        response.headers.update(error.headers or {})  # Allow: the methods the path takes
        return response
    if error.status_code == 404:
        return error_response(404, "ResourceNotFoundException", NOT_FOUND)
    return error_response(error.status_code, "BadRequestException", str(error.detail))


async def _too_large(request: Request, error: Exception) -> Response:
    # The rest of the body is not read: the connection closes, after lingering so that the
    # client, still sending, reads this answer (pyserve.frontend.connection).
    return Response(b"", 413, headers={"connection": "close"})


async def _client_gone(request: Request, error: Exception) -> Response:
    # The client closed the connection before its body ended. Nobody reads this answer (uvicorn
    # drops it); without a handler Starlette would log a traceback and count a 500.
    return error_response(400, "BadRequestException",
                          "Connection closed before the whole request body arrived")


class RequestIds:
    """UUID-shaped ids, unique per server: a random prefix and a counter.

    TorchServe sends a random UUID per request; uuid4() costs as much as routing a request,
    so the randomness is drawn once per process and the counter makes each id unique.
    """

    def __init__(self):
        seed = os.urandom(10).hex()
        self._prefix = f"{seed[:8]}-{seed[8:12]}-4{seed[12:15]}-{'89ab'[int(seed[15], 16) % 4]}{seed[16:19]}-"
        self._count = 0

    def next(self) -> str:
        self._count += 1
        return f"{self._prefix}{self._count:012x}"


class TorchServeHeaders:
    """Adds TorchServe's headers to every response, counts responses by status class, and
    treats a trailing slash as TorchServe does."""

    def __init__(self, app: Callable, metrics: ServerMetrics | None):
        self.app = app
        self.metrics = metrics
        self.ids = RequestIds()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = self.ids.next()
        scope[REQUEST_ID] = request_id
        path = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            # TorchServe splits paths the way Java's String.split does: /models/x/ is /models/x.
            scope["path"] = path.rstrip("/") or "/"
        metrics = self.metrics

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *NO_CACHE_HEADERS,
                                      (b"x-request-id", request_id.encode())]
                if metrics is not None:
                    metrics.count_response(message["status"])
            await send(message)

        await self.app(scope, receive, send_with_headers)


def listener_app(routes: list[BaseRoute], document: Callable[[], dict],
                 metrics: ServerMetrics | None, tokens: KeyCheck | None = None,
                 kind: str = "") -> TorchServeHeaders:
    """A listener's ASGI app: its routes, its API description at `/`, TorchServe's errors,
    and, when `tokens` are given, the `kind` key ("inference" or "management") required."""

    async def describe_api(request: Request) -> Response:
        return json_response(document())

    app = Starlette(
        routes=[
            Route("/", describe_api, methods=["OPTIONS"]),
            Route("/api-description", describe_api, methods=["GET"]),
            *routes,
        ],
        exception_handlers={ServeError: _serve_error, HTTPException: _http_error,
                            BodyTooLarge: _too_large, ClientDisconnect: _client_gone},
    )
    app.router.redirect_slashes = False  # trailing slashes are dropped above, never redirected
    guarded = RequireToken(app, tokens, kind) if tokens is not None else app
    return TorchServeHeaders(guarded, metrics)
