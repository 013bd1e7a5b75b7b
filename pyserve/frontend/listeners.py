"""uvicorn servers that share one event loop and leave signals to pyserve.

uvicorn's Server normally owns SIGINT/SIGTERM and exits the process when it cannot bind;
pyserve runs several listeners in one loop, drains its workers on shutdown and reports a
busy port itself, so it binds the sockets and takes the signals. Each connection is a
pyserve.frontend.connection.BoundedHttpTools, which bounds what a client may cost.
"""

from __future__ import annotations

import contextlib
import resource
import socket

import uvicorn

from pyserve.config import Settings, parse_address
from pyserve.frontend.connection import (MAX_REQUEST_HEAD, REQUEST_BODY_DEADLINE, REQUEST_BODY_TIMEOUT,
                                         REQUEST_HEAD_TIMEOUT, RESPONSE_WRITE_TIMEOUT, BoundedHttpTools,
                                         ConnectionLimits)
from pyserve.frontend.tls import TlsError, is_https, server_context


class ListenerError(Exception):
    """A listener that cannot be set up: an address that cannot be bound, TLS without keys."""


class Listener(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, sock: socket.socket, name: str):
        super().__init__(config)
        self.socket = sock
        self.name = name

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


def listener_tls(settings: Settings, name: str):
    """The TLS context of listener `name` when its address (`<name>_address`) is https://,
    else None; ListenerError when TLS cannot be set up, never plain HTTP instead."""
    address = getattr(settings, f"{name}_address", "")
    if not is_https(address):
        return None
    try:
        return server_context(settings)
    except TlsError as error:
        raise ListenerError(f"cannot serve {address} ({name}) over TLS: {error}") from None


def raise_open_file_limit() -> None:
    """Every connection holds a file descriptor: past the soft limit new clients would find the
    listener deaf (accept fails) rather than answered. Lifts it to the hard limit, as the JVM
    does for TorchServe."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):  # a hard limit the kernel caps lower
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def make_listener(app, sock: socket.socket, name: str, settings: Settings | None = None, *,
                  max_request_head: int = MAX_REQUEST_HEAD,
                  request_head_timeout: float = REQUEST_HEAD_TIMEOUT,
                  request_body_timeout: float = REQUEST_BODY_TIMEOUT,
                  request_body_deadline: float = REQUEST_BODY_DEADLINE,
                  response_write_timeout: float = RESPONSE_WRITE_TIMEOUT) -> Listener:
    """A uvicorn server for `app` on a bound socket (see bind()), with the settings'
    graceful_shutdown_timeout and max_connections, and TLS when the listener's address is
    https:// (see listener_tls). The keywords shorten the other limits, for tests."""
    settings = settings or Settings()
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
        timeout_graceful_shutdown=settings.graceful_shutdown_timeout,
    )
    config.pyserve_limits = ConnectionLimits(
        max_head=max_request_head, head_timeout=request_head_timeout, body_timeout=request_body_timeout,
        body_deadline=request_body_deadline, write_timeout=response_write_timeout,
        max_connections=settings.max_connections)
    config.load()
    config.ssl = listener_tls(settings, name)  # after load(), which would set it from uvicorn's keys
    raise_open_file_limit()
    return Listener(config, sock, name)
