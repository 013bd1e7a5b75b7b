"""A gRPC listener on TorchServe's keys, `<name>_address`:`<name>_port`: a grpc.aio server.
The inference API's (grpc_inference, 127.0.0.1:7070) runs in its own process
(pyserve.grpc.process), the management API's (grpc_management, 127.0.0.1:7071) in the server
process, beside the engine it drives.

As TorchServe does, a request message may be `max_request_size` bytes, `enable_grpc_ssl`
serves both over TLS with `private_key_file` and `certificate_file`, and with token
authorization on each asks for its REST twin's key. A port another process holds is an
error at start, never shared: gRPC would otherwise bind it with SO_REUSEPORT beside that
process.
"""

from __future__ import annotations

import os
import socket
from dataclasses import replace

import grpc

from pyserve.config import Settings
from pyserve.frontend.listeners import ListenerError
from pyserve.frontend.tls import TlsError, server_context
from pyserve.frontend.tokens import KeyCheck
from pyserve.grpc.tokens import RequireToken


class GrpcListener:
    def __init__(self, name: str, server: grpc.aio.Server, port: int, url: str):
        self.name = name
        self.server = server
        self.port = port  # the port it got
        self.url = url  # grpc://host:port, grpcs:// with TLS

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, grace: float | None) -> None:
        """Refuses new calls at once; those in flight have `grace` seconds to finish."""
        await self.server.stop(grace)


def _credentials(settings: Settings) -> grpc.ServerCredentials:
    """TorchServe's gRPC TLS: the PEM files only (a keystore is for the REST listeners).
    They are first loaded as the REST listeners load them, which says what is wrong with
    them; gRPC would only fail to bind."""
    if not (settings.private_key_file and settings.certificate_file):
        raise ListenerError("enable_grpc_ssl needs private_key_file and certificate_file (PEM)")
    try:
        server_context(replace(settings, keystore=None))
    except TlsError as error:
        raise ListenerError(f"enable_grpc_ssl: {error}") from None
    with open(settings.private_key_file, "rb") as key, open(settings.certificate_file, "rb") as chain:
        return grpc.ssl_server_credentials([(key.read(), chain.read())])


def _why_not(host: str, port: int) -> str:
    """Why the socket layer cannot bind host:port, if it cannot."""
    try:
        socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET).close()
    except OSError as error:
        return os.strerror(error.errno) if error.errno else str(error)
    return "gRPC cannot bind it"


def make_grpc_listener(name: str, add_service, settings: Settings,
                       keys: KeyCheck | None, kind: str) -> GrpcListener:
    """A gRPC server bound to `<name>_address`:`<name>_port`, not serving until started."""
    host, port = getattr(settings, f"{name}_address"), getattr(settings, f"{name}_port")
    server = grpc.aio.server(
        interceptors=[RequireToken(keys, kind)] if keys is not None else None,
        options=[("grpc.so_reuseport", 0),
                 ("grpc.max_receive_message_length", settings.max_request_size)])
    add_service(server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if settings.enable_grpc_ssl:
            port = server.add_secure_port(address, _credentials(settings))
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:  # gRPC says only that it failed
        raise ListenerError(f"cannot listen on {address} ({name}): {_why_not(host, port)}") from None
    bound = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return GrpcListener(name, server, port,
                        f"grpc{'s' if settings.enable_grpc_ssl else ''}://{bound}")
