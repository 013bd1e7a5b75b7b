"""uvicorn servers that share one event loop and leave signals to pyserve.

uvicorn's Server normally owns SIGINT/SIGTERM and exits the process when it cannot bind;
pyserve runs several listeners in one loop, drains its workers on shutdown and reports a
busy port itself, so it binds the sockets and takes the signals.

uvicorn's httptools protocol sets no limit on a request's head (request line and headers:
llhttp buffers a header of any size) and no time limit on receiving it, so one client could
fill the server's memory with an endless header, or hold connections open for ever by
trickling a byte at a time. BoundedHttpTools adds both limits: a head over
MAX_REQUEST_HEAD bytes is answered 431 and the connection closed; a connection that has not
sent a whole head within REQUEST_HEAD_TIMEOUT of opening it (or of the first partial head of a
following request) is answered 408 and closed, or only closed if it sent nothing at all.
A body that stops arriving (no bytes for REQUEST_BODY_TIMEOUT while the request is still
incomplete) gets the connection closed, so the handler sees a disconnect and nothing runs.
Idle keep-alive connections between requests are uvicorn's business (timeout_keep_alive).
"""

from __future__ import annotations

import contextlib
import socket

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from pyserve.config import parse_address

MAX_REQUEST_HEAD = 64 * 1024  # bytes; TorchServe (Netty's defaults) allows 4 KiB + 8 KiB
REQUEST_HEAD_TIMEOUT = 60.0  # seconds, as nginx's client_header_timeout
REQUEST_BODY_TIMEOUT = 60.0  # seconds between two reads of a body, as nginx's client_body_timeout


class ListenerError(Exception):
    """A listener address that cannot be bound."""


class HeadTooLarge(Exception):
    """Raised in a parser callback: the request head is over the limit."""


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a size and a time limit on each request's head.

    A head is measured two ways. While it is incomplete, the chunks received are added up, since
    llhttp buffers a header until its end: a header that never ends is refused once the head
    passes the limit, at most one read (256 KiB) later. When it is complete, its target and
    headers are added up, exactly, but only if the bytes received could hold a head that large
    (a head that fits in a small chunk costs one comparison). A chunk that also holds body bytes,
    or the end of one request and the start of the next (pipelining), is not added up: no
    request is refused for its body.
    """

    max_head = MAX_REQUEST_HEAD
    head_timeout = REQUEST_HEAD_TIMEOUT
    body_timeout = REQUEST_BODY_TIMEOUT

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._in_head = True  # waiting for (the rest of) a request line and headers
        self._head_bytes = 0  # chunks received within the current head, before the last one
        self._chunk = 0  # the last chunk received
        self._too_large = False
        self._heads = 0  # heads completed so far on this connection
        self._head_timer = None
        self._in_body = False  # a head arrived and its body is not complete yet
        self._body_read_at = 0.0  # loop time of the last bytes of the body being received
        self._body_timer = None
        limits = getattr(self.config, "pyserve_head_limits", None)
        if limits is not None:
            self.max_head, self.head_timeout, self.body_timeout = limits

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc) -> None:
        self._cancel_head_timer()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        in_head, heads = self._in_head, self._heads
        self._chunk = len(data)
        super().data_received(data)
        if self._in_body:  # one float per chunk; the timer is armed once per slow body
            self._body_read_at = self.loop.time()
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self.body_timeout, self._body_timed_out)
        if not (in_head and self._in_head) or self._heads != heads or self.transport.is_closing():
            return  # the chunk ended a head or held body bytes: nothing to count or time
        self._head_bytes += len(data)
        if self._head_bytes > self.max_head:
            self._refuse(431, "Request header fields too large.")
        else:
            self._arm_head_timer()

    def send_400_response(self, msg: str) -> None:
        if self._too_large:
            self._refuse(431, "Request header fields too large.")
        else:
            super().send_400_response(msg)

    def on_headers_complete(self) -> None:
        if self._head_bytes + self._chunk > self.max_head and self._head_size() > self.max_head:
            self._too_large = True
            raise HeadTooLarge()  # stops the parser; uvicorn answers through send_400_response
        self._in_head = False
        self._heads += 1
        self._head_bytes = 0
        self._cancel_head_timer()
        self._in_body = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()
        self._in_head = True  # the next bytes begin the next request: its timer starts with them

    def _head_size(self) -> int:
        """The request target and headers as received (uvicorn keeps them), with ": " and CRLFs."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self._head_bytes:
            self._refuse(408, "Request head not received in time.")
        else:  # nothing of a request arrived: no answer, which a client could take for its own
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if not self._in_body or self.transport.is_closing():
            return
        idle = self.loop.time() - self._body_read_at
        if idle < self.body_timeout:
            self._body_timer = self.loop.call_later(self.body_timeout - idle, self._body_timed_out)
        else:  # the handler gets http.disconnect and runs nothing
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answers `status` and closes, unless a response is still owed on this connection
        (pipelining): then it only closes, so that no answer comes out of order."""
        self._cancel_head_timer()
        if self.cycle is None or self.cycle.response_complete:
            body = message.encode()
            self.transport.write(b"".join([
                STATUS_LINE[status], b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: %d\r\n" % len(body), b"connection: close\r\n\r\n", body]))
        self.transport.close()


class Listener(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, sock: socket.socket):
        super().__init__(config)
        self.socket = sock

    def capture_signals(self):  # noqa: D102 - see module docstring
        return contextlib.nullcontext()

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]

    async def run_until_stopped(self) -> None:
        await self.serve(sockets=[self.socket])


def bind(address: str, name: str) -> socket.socket:
    host, port = parse_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as error:
        raise ListenerError(f"cannot listen on {address} ({name}): {error.strerror}") from None


def bind_group(address: str, name: str, count: int) -> list[socket.socket]:
    """`count` listening sockets on one address (SO_REUSEPORT), one per frontend process.

    The kernel spreads new connections over them evenly; processes that share one socket
    get whatever each wins in the race to accept, and one of them may end up with most of
    the connections. The address is first bound alone, so that a busy one is reported as
    with one socket, even when another server holds it with SO_REUSEPORT too."""
    probe = bind(address, name)
    host, port = probe.getsockname()[:2]
    probe.close()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(socket.create_server((host, port), family=family, backlog=2048,
                                                reuse_port=True))
    except OSError as error:
        for sock in sockets:
            sock.close()
        raise ListenerError(f"cannot listen on {address} ({name}): {error.strerror}") from None
    return sockets


def make_listener(app, sock: socket.socket, name: str, graceful_shutdown_timeout: int = 30,
                  max_request_head: int = MAX_REQUEST_HEAD,
                  request_head_timeout: float = REQUEST_HEAD_TIMEOUT,
                  request_body_timeout: float = REQUEST_BODY_TIMEOUT) -> Listener:
    """A uvicorn server for `app` on a bound socket (see bind())."""
    config = uvicorn.Config(
        app,
        http=BoundedHttpTools,
        lifespan="off",
        access_log=False,
        log_level="warning",
        # TorchServe sends no Server or Date header and reads no X-Forwarded-*; each costs
        # time on every response.
        server_header=False,
        date_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=graceful_shutdown_timeout,
    )
    config.pyserve_head_limits = (max_request_head, request_head_timeout, request_body_timeout)
    return Listener(config, sock)
