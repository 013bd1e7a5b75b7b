"""One frontend process: the inference listener's app on a socket the server shares with it.

Started by pyserve.supervisor with its descriptors: the listening socket, its channel to the
server's core and its control link. It serves the inference API exactly as the server
process does when it runs alone, from the snapshots the server sends (a `Replica`), and
sends its requests through its own channel. It dies with the server (PDEATHSIG), stops
accepting on SIGTERM and exits once its requests are answered.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import sys

import uvloop

from pyserve import _core
from pyserve.allocator import tune_allocator
from pyserve.config import Settings
from pyserve.errors import ServiceUnavailable
from pyserve.frontend.inference import inference_app
from pyserve.frontend.listeners import Listener, make_listener
from pyserve.frontend.tokens import InferenceKey
from pyserve.logfiles import LogFiles
from pyserve.logs import configure_logging
from pyserve.metrics import ServerMetrics
from pyserve.serving.client import ChannelClient
from pyserve.serving.directory import Replica
from pyserve.serving.link import LinkClosed, read_message, write_message

log = logging.getLogger("pyserve.frontend")

STARTED_POLL_SECONDS = 0.01


async def follow(reader, writer, replica: Replica, key: InferenceKey | None,
                 metrics: ServerMetrics) -> None:
    """Applies the server's snapshots and answers its questions until the link closes."""
    while True:
        message = await read_message(reader)
        if message["op"] == "state":
            replica.update(message["models"], message["healthy"])
            if key is not None and message["key"]:
                key.update(message["key"])
            write_message(writer, {"op": "ack", "gen": message["gen"]})
        elif message["op"] == "counters":
            write_message(writer, {"op": "counters", "id": message["id"], "counters": metrics.counters()})


async def _started(listener: Listener, serving: asyncio.Task) -> bool:
    while not listener.started:
        if serving.done():
            return False
        await asyncio.sleep(STARTED_POLL_SECONDS)
    return True


async def serve(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=args.link_fd))
    hello = await read_message(reader)
    settings = Settings(**hello["settings"])
    state = await read_message(reader)

    metrics = ServerMetrics()
    log_files = LogFiles.open(settings, metrics)
    client = ChannelClient(_core.FrontendChannel(*args.channel), args.origin, loop)
    replica = Replica(client, metrics)
    replica.update(state["models"], state["healthy"])
    key = InferenceKey(state["key"]) if hello["tokens"] else None
    write_message(writer, {"op": "ack", "gen": state["gen"]})

    app = inference_app(replica, settings, hello["version"], key)
    listener = make_listener(app, socket.socket(fileno=args.listen_fd), "inference", settings)
    serving = asyncio.create_task(listener.run_until_stopped())
    if not await _started(listener, serving):
        return 1
    write_message(writer, {"op": "ready"})
    gc.freeze()  # see pyserve.server: startup objects are never garbage
    following = asyncio.create_task(follow(reader, writer, replica, key, metrics))
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([stopped, serving, following], return_when=asyncio.FIRST_COMPLETED)
    if following.done() and isinstance(following.exception(), LinkClosed):
        log.error("the server closed the control link; stopping")
    listener.should_exit = True
    await asyncio.gather(serving, return_exceptions=True)
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


def child_parser(prog: str) -> argparse.ArgumentParser:
    """The arguments every process the supervisor starts takes (pyserve.supervisor)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--channel", required=True, type=lambda v: [int(fd) for fd in v.split(",")],
                        help="its channel's descriptors: down ring, up ring, up eventfd, down eventfd")
    parser.add_argument("--origin", type=int, required=True, help="the origin its request ids carry")
    parser.add_argument("--link-fd", type=int, required=True, help="its end of the control link")
    parser.add_argument("--parent-pid", type=int, required=True, help="the server's pid")
    return parser


def run_child(role: str, serve, args: argparse.Namespace) -> int:
    """Runs `serve(args)` in a process the supervisor started, which dies with the server."""
    configure_logging(role)
    # Ctrl-C reaches the whole process group; the server decides when this process stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _core.set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != args.parent_pid:
        return 1  # the server died before the death signal was armed
    tune_allocator()
    return uvloop.run(serve(args))


def main(argv: list[str] | None = None) -> int:
    parser = child_parser("python -m pyserve.frontend.process")
    parser.add_argument("--listen-fd", type=int, required=True, help="the inherited listening socket")
    return run_child("frontend", serve, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
