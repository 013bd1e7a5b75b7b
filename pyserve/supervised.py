"""What every process pyserve.supervisor starts does around the listener it serves.

An HTTP frontend process (pyserve.frontend.process) and the gRPC process (pyserve.grpc.process)
differ only in their listener. Both take the same arguments, die with the server, join it
over their control link (its settings, then a snapshot of the models, the health and the
inference key, applied to a `Replica` that sends requests through the process's own
channel), follow its later snapshots, and on SIGTERM, or when the link closes, stop and hand
their counters back.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
from dataclasses import dataclass
from typing import Awaitable, Callable

import uvloop

from pyserve import _core
from pyserve.allocator import tune_allocator
from pyserve.config import Settings
from pyserve.errors import ServiceUnavailable
from pyserve.frontend.tokens import InferenceKey
from pyserve.logfiles import LogFiles
from pyserve.logs import configure_logging
from pyserve.metrics import ServerMetrics
from pyserve.serving.client import ChannelClient
from pyserve.serving.directory import Replica
from pyserve.serving.link import LinkClosed, read_message, write_message

log = logging.getLogger("pyserve.supervised")


def child_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """The arguments every process the supervisor starts takes (pyserve.supervisor)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
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


@dataclass
class Joined:
    """A process the server has let in: its settings, its view of the models, its link."""

    hello: dict
    settings: Settings
    replica: Replica
    key: InferenceKey | None
    client: ChannelClient
    metrics: ServerMetrics
    log_files: LogFiles
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    stop: asyncio.Event  # set on SIGTERM

    async def fail(self, error: str) -> int:
        """Reports a listener that could not start; the exit code."""
        write_message(self.writer, {"op": "failed", "error": error})
        await self.writer.drain()
        return 1

    async def serve(self, ready: dict, stop_listener: Callable[[], Awaitable[object]],
                    serving: asyncio.Task | None = None) -> int:
        """Says `ready`, follows the server until SIGTERM, the link closing or `serving`
        ending, awaits `stop_listener()` (requests in flight are answered), and leaves:
        what still waits is refused, the counters go back. The exit code."""
        write_message(self.writer, ready)
        gc.freeze()  # see pyserve.server: startup objects are never garbage
        following = asyncio.create_task(
            follow(self.reader, self.writer, self.replica, self.key, self.metrics))
        stopped = asyncio.create_task(self.stop.wait())
        await asyncio.wait([stopped, following, *([serving] if serving else [])],
                           return_when=asyncio.FIRST_COMPLETED)
        if following.done() and isinstance(following.exception(), LinkClosed):
            log.error("the server closed the control link; stopping")
        await stop_listener()
        self.client.fail_all(ServiceUnavailable("Server is shutting down"))
        write_message(self.writer, {"op": "counters", "id": 0, "counters": self.metrics.counters()})
        try:
            await self.writer.drain()
        except ConnectionError:
            pass
        await self.log_files.close()
        following.cancel()
        stopped.cancel()
        return 0


async def join(args: argparse.Namespace,
               adjust: Callable[[Settings, dict], Settings] | None = None) -> Joined:
    """Joins the server over the control link: its settings (`adjust`ed with its hello),
    its first snapshot, acknowledged."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=args.link_fd))
    hello = await read_message(reader)
    settings = Settings(**hello["settings"])
    if adjust is not None:
        settings = adjust(settings, hello)
    state = await read_message(reader)
    metrics = ServerMetrics()
    log_files = LogFiles.open(settings, metrics)
    client = ChannelClient(_core.FrontendChannel(*args.channel), args.origin, loop)
    replica = Replica(client, metrics)
    replica.update(state["models"], state["healthy"])
    key = InferenceKey(state["key"]) if hello["tokens"] else None
    write_message(writer, {"op": "ack", "gen": state["gen"]})
    return Joined(hello, settings, replica, key, client, metrics, log_files, reader, writer, stop)
