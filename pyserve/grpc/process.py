"""The gRPC inference listener's own process.

grpc.aio costs the server about five times what HTTP does per prediction (some 300 us of CPU
against 60, benchmarks/grpc_vs_rest.py), so it is kept out of the event loop that serves
HTTP. Started by pyserve.supervisor as an HTTP frontend process is, it has its own channel to
the server's core, learns the models, their health and the inference key from the server's
snapshots (a `Replica`, pyserve.supervised), and so batches its requests with
REST ones in the same per-model batchers.

gRPC cannot take over a listening socket, so it binds its address itself, and reports the
port in its ready message; restarted, it binds that same port again. A port it cannot bind
is reported as its failure, which stops the server's start. It dies with the server
(PDEATHSIG), refuses new calls on SIGTERM and exits once those in flight are answered.
"""

from __future__ import annotations

import logging
import sys

from pyserve.config import Settings
from pyserve.frontend.listeners import ListenerError
from pyserve.grpc.inference import inference_listener
from pyserve.grpc.open_inference import add_open_inference_service
from pyserve.supervised import child_parser, join, run_child

log = logging.getLogger("pyserve.grpc")


def _known_port(settings: Settings, hello: dict) -> Settings:
    if hello.get("port") is not None:  # a restart: the port clients already know
        return settings.merged(grpc_inference_port=hello["port"])
    return settings


async def serve(args) -> int:
    joined = await join(args, _known_port)
    try:
        listener = inference_listener(joined.replica, joined.settings, joined.key)
        add_open_inference_service(listener.server, joined.replica)  # KServe's, beside it
    except ListenerError as error:
        log.error("%s", error)
        return await joined.fail(str(error))
    await listener.start()
    return await joined.serve({"op": "ready", "port": listener.port, "url": listener.url},
                              lambda: listener.stop(joined.settings.graceful_shutdown_timeout))


def main(argv: list[str] | None = None) -> int:
    args = child_parser("python -m pyserve.grpc.process", __doc__).parse_args(argv)
    return run_child("grpc", serve, args)


if __name__ == "__main__":
    sys.exit(main())
