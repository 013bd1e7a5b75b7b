"""Predictions, the hot path: a bare ASGI app in front of the inference listener's Starlette app.

`/predictions/...` is most of a model server's traffic, so it skips Starlette's router,
middleware stack and Request/Response objects, which cost more than the rest of the
request together: one path split, one pass over the headers, one ASGI response. Every
other route still goes through Starlette. Both share `Predictor`, so what a prediction
does (metrics, headers added for the handler, the answer) is written once.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time

from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse

from pyserve.errors import ServeError
from pyserve.frames import Result
from pyserve.frontend.hangup import Hangup, hangup_of
from pyserve.frontend.http import NO_CACHE_HEADERS, BodyTooLarge, RequestIds, read_body
from pyserve.frontend.tokens import AUTHORIZATION_FAILED, KeyCheck
from pyserve.serving.directory import Directory
from pyserve.serving.sequences import with_sequence
from pyserve.serving.streamed import Streamed

JSON = b"application/json"
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
BAD_HEADER_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]|[^\x00-\xff]")  # uvicorn's rule, and Latin-1
SHOWN_NAME_CHARACTERS = 64
METHODS = ("POST", "PUT", "GET")
PREFIX = "/predictions/"


class Predictor:
    """What one prediction does, whichever route it came in by."""

    def __init__(self, directory: Directory):
        self.directory = directory
        self.metrics = directory.metrics

    async def predict(self, name: str, version: str | None, url_path: str, explain: bool,
                      request_id: str, headers: list, content_type: str,
                      body: bytes, hangup: Hangup | None = None) -> Result | Streamed:
        """The handler's answer. Work nobody waits for is not done, one path for every way
        of no longer waiting: if the client hangs up first (`hangup`, from pyserve's HTTP
        connection), the future is cancelled; if the task waiting here is cancelled (a
        cancelled gRPC call, a Ray Serve request), asyncio cancels the future with it. Either
        way the request is withdrawn from the core (it never runs if it can still be
        stopped), and ClientDisconnect raised for a hangup."""
        arrival = time.monotonic_ns()
        model = self.directory.model(name, version)
        stats = self.metrics.request_stats(name, version or "default")
        stats.requests += 1  # TorchServe counts a request once accepted, even if it then fails
        headers = [*headers, (b"url_path", url_path.encode()),
                   (b"explain", b"True" if explain else b"False")]
        sequence = 0
        if model.stateful:
            headers, sequence = with_sequence(headers)
        id, pending = self.directory.infer(model, request_id, content_type, headers, body,
                                           sequence)
        if hangup is not None:
            hangup.call_on_hangup(pending.cancel)
        try:
            answer = await pending
        except asyncio.CancelledError:
            self.directory.withdraw(model, id)
            if hangup is None or not hangup.happened:
                raise
            raise ClientDisconnect() from None
        if isinstance(answer, Streamed):
            result = answer.first
            answer.withdraw = functools.partial(self.directory.withdraw, model, id)
            if hangup is not None:
                hangup.call_on_hangup(answer.cancel)
        else:
            result = answer
        stats.latency_us += (time.monotonic_ns() - arrival) / 1000
        if result.started_ns:
            stats.queue_latency_us += max(result.started_ns - arrival, 0) / 1000
        return answer


def _header(name: str, value: str) -> tuple[bytes, bytes]:
    """A handler's header as HTTP can carry it, else a 500 naming it: a CR or LF would end
    the response head early, a character outside Latin-1 cannot be sent at all."""
    if HEADER_NAME.fullmatch(name) and not BAD_HEADER_VALUE.search(value):
        return name.encode("latin-1"), value.encode("latin-1")
    shown = repr(name[:SHOWN_NAME_CHARACTERS]) + ("..." if len(name) > SHOWN_NAME_CHARACTERS else "")
    raise ServeError(500, "InternalServerException",
                     f"Handler set a response header that cannot be sent: {shown}")


def result_headers(result: Result, streamed: bool = False) -> tuple[int, list]:
    """The handler's answer as (status, headers): its content type only if it set one. A
    streamed answer has no length: it goes in chunks."""
    if not 100 <= result.status <= 599:
        raise ServeError(500, "InternalServerException",
                         f"Handler set an invalid HTTP status: {result.status}")
    headers = [] if streamed else [(b"content-length", str(len(result.body)).encode())]
    if result.content_type is not None:
        headers.append(_header("Content-Type", result.content_type))
    for name, value in result.headers:
        headers.append(_header(name, value))
    return result.status, headers


def handler_response(answer: Result | Streamed) -> Response:
    """The handler's answer as a Starlette response, as it wrote it: status, headers, body
    (in chunks if it streamed)."""
    if isinstance(answer, Streamed):
        status, headers = result_headers(answer.first, streamed=True)
        response: Response = StreamingResponse(answer.bodies(), status_code=status)
    else:
        status, headers = result_headers(answer)
        response = Response(answer.body, status_code=status)
    response.raw_headers = headers
    return response


class FastPredictions:
    """ASGI app serving `/predictions/...` itself and passing everything else to `fallback`."""

    def __init__(self, predictor: Predictor, fallback, max_request_size: int,
                 tokens: KeyCheck | None):
        self.predictor = predictor
        self.fallback = fallback
        self.limit = max_request_size
        self.tokens = tokens
        self.metrics = predictor.metrics
        self.ids = RequestIds()

    async def __call__(self, scope, receive, send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if not path.startswith(PREFIX) or scope["method"] not in METHODS:
            await self.fallback(scope, receive, send)
            return
        segments = path[len(PREFIX):].rstrip("/").split("/", 2)
        if not segments[0]:
            await self.fallback(scope, receive, send)
            return
        request_id = self.ids.next()
        streamed = None
        try:
            status, headers, body = await self._predict(scope, receive, segments, request_id)
            if isinstance(body, Streamed):
                streamed, body = body, body.first.body
        except ClientDisconnect:  # a body cut short, or a client that left before its answer
            return
        except ServeError as error:
            status, headers, body = error.code, [(b"content-type", JSON)], error.body()
            headers.append((b"content-length", str(len(body)).encode()))
            headers.extend((name.encode(), value.encode()) for name, value in error.headers.items())
        headers.extend(NO_CACHE_HEADERS)
        headers.append((b"x-request-id", request_id.encode()))
        self.metrics.count_response(status)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if streamed is None:
            await send({"type": "http.response.body", "body": body})
            return
        await send({"type": "http.response.body", "body": body, "more_body": True})
        async for part in streamed.rest():
            await send({"type": "http.response.body", "body": part.body,
                        "more_body": part.more})

    async def _predict(self, scope, receive, segments: list[str], request_id: str):
        content_type = authorization = declared = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-length":
                declared = value
            elif name == b"authorization":
                authorization = value.decode("latin-1")
        if self.tokens is not None and not self.tokens.valid("inference", authorization):
            raise ServeError(400, "InvalidKeyException", AUTHORIZATION_FAILED)
        try:
            body = await read_body(receive, declared, self.limit)
        except BodyTooLarge:  # the rest of the body is not read: the connection closes, lingering
            return 413, [(b"content-length", b"0"), (b"connection", b"close")], b""
        name = segments[0]
        version = segments[1] if len(segments) > 1 else None
        url_path = segments[2] if len(segments) > 2 else ""
        answer = await self.predictor.predict(name, version, url_path, False, request_id,
                                              scope["headers"], content_type or "", body,
                                              hangup_of(scope))
        if isinstance(answer, Streamed):
            status, headers = result_headers(answer.first, streamed=True)
            return status, headers, answer
        status, headers = result_headers(answer)
        return status, headers, answer.body
