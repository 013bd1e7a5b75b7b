"""The gRPC inference listener's own process.

grpc.aio costs the server about five times what HTTP does per prediction (some 300 us of CPU
against 60, benchmarks/grpc_vs_rest.py), so it is kept out of the event loop that serves
HTTP. Started by pyserve.supervisor as an HTTP frontend process is, it has its own channel to
the server's core, learns the models, their health and the inference key from the server's
snapshots (a `Replica`, pyserve.frontend.process.follow), and so batches its requests with
REST ones in the same per-model batchers.

gRPC cannot take over a listening socket, so it binds its address itself, and reports the
port in its ready message; restarted, it binds that same port again. A port it cannot bind
is reported as its failure, which stops the server's start. It dies with the server
(PDEATHSIG), refuses new calls on SIGTERM and exits once those in flight are answered.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import socket
import sys

from pyserve import _core
from pyserve.config import Settings
from pyserve.errors import ServiceUnavailable
from pyserve.frontend.listeners import ListenerError
from pyserve.frontend.process import child_parser, follow, run_child
from pyserve.frontend.tokens import InferenceKey
from pyserve.grpc.inference import inference_listener
from pyserve.grpc.open_inference import add_open_inference_service
from pyserve.logfiles import LogFiles
from pyserve.metrics import ServerMetrics
from pyserve.serving.client import ChannelClient
from pyserve.serving.directory import Replica
from pyserve.serving.link import LinkClosed, read_message, write_message

log = logging.getLogger("pyserve.grpc")


async def serve(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=args.link_fd))
    hello = await read_message(reader)
    settings = Settings(**hello["settings"])
    if hello.get("port") is not None:  # a restart: the port clients already know
        settings = settings.merged(grpc_inference_port=hello["port"])
    state = await read_message(reader)

    metrics = ServerMetrics()
    log_files = LogFiles.open(settings, metrics)
    client = ChannelClient(_core.FrontendChannel(*args.channel), args.origin, loop)
    replica = Replica(client, metrics)
    replica.update(state["models"], state["healthy"])
    key = InferenceKey(state["key"]) if hello["tokens"] else None
    write_message(writer, {"op": "ack", "gen": state["gen"]})

    try:
        listener = inference_listener(replica, settings, key)
        add_open_inference_service(listener.server, replica)  # KServe's, beside it
    except ListenerError as error:
        log.error("%s", error)
        write_message(writer, {"op": "failed", "error": str(error)})
        await writer.drain()
        return 1
    await listener.start()
    write_message(writer, {"op": "ready", "port": listener.port, "url": listener.url})
    gc.freeze()  # see pyserve.server: startup objects are never garbage
    following = asyncio.create_task(follow(reader, writer, replica, key, metrics))
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([stopped, following], return_when=asyncio.FIRST_COMPLETED)
    if following.done() and isinstance(following.exception(), LinkClosed):
        log.error("the server closed the control link; stopping")
    await listener.stop(settings.graceful_shutdown_timeout)
    client.fail_all(ServiceUnavailable("Server is shutting down"))
    write_message(writer, {"op": "counters", "id": 0, "counters": metrics.counters()})
    try:
        await writer.drain()
    except ConnectionError:
        pass
    await log_files.close()
    following.cancel()
    stopped.cancel()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = child_parser("python -m pyserve.grpc.process").parse_args(argv)
    return run_child("grpc", serve, args)


if __name__ == "__main__":
    sys.exit(main())
