"""uvicorn servers that share one event loop and leave signals to pyserve.

uvicorn's Server normally owns SIGINT/SIGTERM and exits the process when it cannot bind;
pyserve runs several listeners in one loop, drains its workers on shutdown and reports a
busy port itself, so it binds the sockets and takes the signals.
"""

from __future__ import annotations

import contextlib
import socket

import uvicorn

from pyserve.config import parse_address


class ListenerError(Exception):
    """A listener address that cannot be bound."""


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


def make_listener(app, address: str, name: str) -> Listener:
    sock = bind(address, name)
    config = uvicorn.Config(
        app,
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        # TorchServe sends no Server or Date header and reads no X-Forwarded-*; each costs
        # time on every response.
        server_header=False,
        date_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=30,
    )
    return Listener(config, sock)
