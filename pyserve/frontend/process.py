"""One frontend process: the inference listener's app on a socket the server shares with it.

Started by pyserve.supervisor with its descriptors: the listening socket, its channel to the
server's core and its control link. It serves the inference API exactly as the server
process does when it runs alone, from the snapshots the server sends (a `Replica`), and
sends its requests through its own channel. It dies with the server (PDEATHSIG), stops
accepting on SIGTERM and exits once its requests are answered.
"""

from __future__ import annotations

import asyncio
import socket
import sys

from pyserve.frontend.inference import inference_app
from pyserve.frontend.listeners import Listener, make_listener
from pyserve.supervised import child_parser, join, run_child

STARTED_POLL_SECONDS = 0.01


async def _started(listener: Listener, serving: asyncio.Task) -> bool:
    while not listener.started:
        if serving.done():
            return False
        await asyncio.sleep(STARTED_POLL_SECONDS)
    return True


async def serve(args) -> int:
    joined = await join(args)
    app = inference_app(joined.replica, joined.settings, joined.hello["version"], joined.key)
    listener = make_listener(app, socket.socket(fileno=args.listen_fd), "inference",
                             joined.settings)
    serving = asyncio.create_task(listener.run_until_stopped())
    if not await _started(listener, serving):
        return 1

    async def stop_listener() -> None:
        listener.should_exit = True
        await asyncio.gather(serving, return_exceptions=True)

    return await joined.serve({"op": "ready"}, stop_listener, serving)


def main(argv: list[str] | None = None) -> int:
    parser = child_parser("python -m pyserve.frontend.process", __doc__)
    parser.add_argument("--listen-fd", type=int, required=True, help="the inherited listening socket")
    return run_child("frontend", serve, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
