"""N frontend processes on the inference listener, so that HTTP uses every core.

One Python event loop parses HTTP for one core's worth of requests. With
`frontend_processes` above 1 the server process binds that many sockets on the inference
address (SO_REUSEPORT: the kernel spreads connections over them) and starts as many
frontend processes (pyserve.frontend.process), each accepting on its own socket, each a
uvloop Starlette app with its own channel to the server's core: batches still form across
all their connections, because every request meets the same per-model batcher. The server
keeps every socket open, so a restarting frontend's new connections wait in its backlog.

What a frontend knows of the models, their health and the inference key comes in numbered
snapshots over its control link (pyserve.serving.link). The engine calls `changed()` when
any of it changes; a management call that changed it awaits `settle()`, which returns once
every frontend has acknowledged the new snapshot, so a model answers everywhere as soon as
its registration has answered. Metrics ask every frontend for its counters and add them up.

A frontend that dies is restarted after a short back-off; the core drops what it still had
queued (nobody waits for it), and requests on other frontends are untouched.

The gRPC inference listener is one more such process (pyserve.grpc.process), whatever
`frontend_processes` says: it binds its own port, which its ready message reports and its
restarts bind again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import time

from pyserve.config import Settings
from pyserve.frontend.tokens import TokenKeys
from pyserve.serving.directory import snapshot_models
from pyserve.serving.link import LinkClosed, read_message, write_message

log = logging.getLogger("pyserve.supervisor")

RESTART_BACKOFF = (1, 2, 5, 10)  # seconds; starts over once a frontend stayed up STABLE_SECONDS
STABLE_SECONDS = 60.0
READY_TIMEOUT = 60.0
SETTLE_TIMEOUT = 5.0
COUNTERS_TIMEOUT = 2.0


def add_counters(total: dict, other: dict) -> dict:
    """Two processes' ServerMetrics.counters() as one."""
    responses = dict(total.get("responses", {}))
    for status_class, count in other["responses"].items():
        responses[status_class] = responses.get(status_class, 0) + count
    requests: dict[tuple[str, str], list] = {(r[0], r[1]): list(r) for r in total.get("requests", [])}
    for name, version, count, latency_us, queue_latency_us in other["requests"]:
        row = requests.setdefault((name, version), [name, version, 0, 0.0, 0.0])
        row[2] += count
        row[3] += latency_us
        row[4] += queue_latency_us
    return {"responses": responses, "requests": list(requests.values())}


@dataclasses.dataclass
class Slot:
    """What one frontend process serves: `module` run with the listening socket the server
    keeps for it, or without one a port it binds itself (`port`, once it reported one)."""

    module: str
    listening: socket.socket | None = None
    port: int | None = None
    url: str | None = None  # where it serves, as it reported


HTTP_FRONTEND = "pyserve.frontend.process"
GRPC_FRONTEND = "pyserve.grpc.process"


class Frontend:
    """One frontend process and its end of the link."""

    def __init__(self, slot: int, origin: int, process: subprocess.Popen, pidfd: int,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.slot = slot
        self.origin = origin
        self.process = process
        self.pidfd = pidfd
        self.reader = reader
        self.writer = writer
        self.started = time.monotonic()
        self.ready = asyncio.get_running_loop().create_future()
        self.acked = 0  # the newest snapshot it acknowledged
        self.counters: dict = {"responses": {}, "requests": []}  # the last it reported
        self.replies: dict[int, asyncio.Future] = {}
        self.exited = asyncio.get_running_loop().create_future()
        self.link_task: asyncio.Task | None = None


class FrontendSupervisor:
    def __init__(self, engine, settings: Settings, version: str, slots: list[Slot],
                 tokens: TokenKeys | None):
        self.engine = engine
        self.settings = settings
        self.version = version
        self.slots = slots
        self.tokens = tokens
        self.count = len(slots)
        self.frontends: dict[int, Frontend] = {}  # by slot
        self.closing = False
        self._generation = 0
        self._published = -1
        self._acked = asyncio.Condition()
        self._retired: dict = {"responses": {}, "requests": []}  # counters of frontends gone
        self._retiring: set[Frontend] = set()  # gone, their last counters still to be read
        self._request_ids = itertools.count(1)
        self._restarts: dict[int, int] = {}
        self._publish_pending = False
        self._loop = asyncio.get_running_loop()

    async def start(self) -> None:
        """Starts every frontend and returns once all of them serve; RuntimeError if one cannot."""
        started = [await self._spawn(slot) for slot in range(self.count)]
        _, late = await asyncio.wait([f.ready for f in started], timeout=READY_TIMEOUT)
        for frontend in started:
            if frontend.ready in late or not frontend.ready.result():
                raise RuntimeError("frontend processes did not start; see the log")
            if isinstance(frontend.ready.result(), str):  # what it reported as its failure
                raise RuntimeError(frontend.ready.result())

    # -- processes --------------------------------------------------------------------

    async def _spawn(self, slot: int) -> Frontend:
        origin, fds = self.engine.core.add_frontend()
        ours, theirs = socket.socketpair()
        process = None
        spec = self.slots[slot]
        listening = [] if spec.listening is None else [spec.listening.fileno()]
        try:
            inherited = (*listening, *fds, theirs.fileno())
            process = subprocess.Popen(
                # -P: the installed pyserve, even when the server runs from a checkout.
                [sys.executable, "-P", "-m", spec.module,
                 *(["--listen-fd", str(listening[0])] if listening else []),
                 "--channel", ",".join(map(str, fds)),
                 "--origin", str(origin), "--link-fd", str(theirs.fileno()),
                 "--parent-pid", str(os.getpid())],
                stdin=subprocess.DEVNULL, pass_fds=inherited,
            )
            theirs.close()
            pidfd = os.pidfd_open(process.pid)
            reader, writer = await asyncio.open_unix_connection(sock=ours)
        except BaseException:
            theirs.close()
            ours.close()
            if process is not None:
                process.kill()
                process.wait()
            self.engine.core.remove_frontend(origin)
            raise
        frontend = Frontend(slot, origin, process, pidfd, reader, writer)
        self.frontends[slot] = frontend
        self._loop.add_reader(pidfd, self._reap, frontend)
        write_message(writer, {"op": "hello", "version": self.version,
                               "settings": dataclasses.asdict(self.settings),
                               "tokens": self.tokens is not None, "port": spec.port})
        write_message(writer, self._state())
        frontend.link_task = asyncio.create_task(self._listen(frontend))
        kind = "the gRPC process" if spec.module == GRPC_FRONTEND else "HTTP frontend"
        log.info("%s (slot %d) started (pid %d)", kind, slot, process.pid)
        return frontend

    def _reap(self, frontend: Frontend) -> None:
        self._loop.remove_reader(frontend.pidfd)
        os.close(frontend.pidfd)
        code = frontend.process.wait()
        self.engine.core.remove_frontend(frontend.origin)
        self._retiring.add(frontend)
        asyncio.create_task(self._retire(frontend))
        if self.frontends.get(frontend.slot) is frontend:
            del self.frontends[frontend.slot]
        for future in (frontend.ready, *frontend.replies.values()):
            if not future.done():
                future.set_result(None)
        frontend.exited.set_result(code)
        if self.closing:
            return
        log.warning("frontend %d (pid %d) exited with code %s; restarting it", frontend.slot,
                    frontend.process.pid, code)
        if time.monotonic() - frontend.started > STABLE_SECONDS:
            self._restarts.pop(frontend.slot, None)
        attempt = self._restarts.get(frontend.slot, 0)
        self._restarts[frontend.slot] = attempt + 1
        delay = RESTART_BACKOFF[min(attempt, len(RESTART_BACKOFF) - 1)]
        self._loop.call_later(delay, lambda: asyncio.create_task(self._restart(frontend.slot)))

    async def _retire(self, frontend: Frontend) -> None:
        """Its counters join the totals once the link has given up what it sent last."""
        try:
            await asyncio.wait_for(asyncio.shield(frontend.link_task), COUNTERS_TIMEOUT)
        except asyncio.TimeoutError:
            frontend.link_task.cancel()
        frontend.writer.close()
        self._retired = add_counters(self._retired, frontend.counters)
        self._retiring.discard(frontend)

    async def _restart(self, slot: int) -> None:
        if self.closing or slot in self.frontends:
            return
        try:
            await self._spawn(slot)
        except (OSError, RuntimeError) as error:
            log.error("cannot restart frontend %d: %s", slot, error)

    async def _listen(self, frontend: Frontend) -> None:
        try:
            while True:
                message = await read_message(frontend.reader)
                op = message["op"]
                if op == "ready" and not frontend.ready.done():
                    if "port" in message:
                        spec = self.slots[frontend.slot]
                        spec.port, spec.url = message["port"], message["url"]
                    frontend.ready.set_result(True)
                elif op == "failed" and not frontend.ready.done():
                    frontend.ready.set_result(message["error"])
                elif op == "ack":
                    async with self._acked:
                        frontend.acked = max(frontend.acked, message["gen"])
                        self._acked.notify_all()
                elif op == "counters":
                    frontend.counters = message["counters"]
                    reply = frontend.replies.pop(message.get("id", 0), None)
                    if reply is not None and not reply.done():
                        reply.set_result(message["counters"])
        except LinkClosed:
            pass  # the process is on its way out; _reap cleans up

    # -- what the frontends know ------------------------------------------------------

    def _state(self) -> dict:
        return {"op": "state", "gen": self._generation,
                "models": snapshot_models(self.engine), "healthy": self.engine.healthy(),
                "key": self.tokens.inference_only() if self.tokens else None}

    def changed(self) -> None:
        """Something frontends see changed: publish it soon, once for many changes."""
        self._generation += 1
        if not self._publish_pending:
            self._publish_pending = True
            self._loop.call_soon(self._publish)

    def _publish(self) -> None:
        self._publish_pending = False
        if self._published == self._generation:
            return
        self._published = self._generation
        state = self._state()
        for frontend in list(self.frontends.values()):
            write_message(frontend.writer, state)

    async def settle(self) -> None:
        """Returns once every running frontend has the newest snapshot in force."""
        self._publish()
        wanted = self._generation
        try:
            async with self._acked:
                await asyncio.wait_for(self._acked.wait_for(
                    lambda: all(f.acked >= wanted for f in self.frontends.values())), SETTLE_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("a frontend did not take snapshot %d within %s s", wanted, SETTLE_TIMEOUT)

    async def counters(self) -> list[dict]:
        """Every frontend's request counters, and those of frontends that are gone."""
        asked = []
        for frontend in list(self.frontends.values()):
            id = next(self._request_ids)
            reply = self._loop.create_future()
            frontend.replies[id] = reply
            write_message(frontend.writer, {"op": "counters", "id": id})
            asked.append((frontend, reply))
        if asked:
            await asyncio.wait([reply for _, reply in asked], timeout=COUNTERS_TIMEOUT)
        # A frontend that did not answer in time counts with what it reported last.
        return [self._retired, *(f.counters for f in self._retiring),
                *(frontend.counters for frontend, _ in asked)]

    async def stop(self) -> None:
        """Lets every frontend finish its requests and exit."""
        self.closing = True
        frontends = list(self.frontends.values())
        for frontend in frontends:
            try:
                frontend.process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        if not frontends:
            return
        _, late = await asyncio.wait([f.exited for f in frontends],
                                     timeout=self.settings.graceful_shutdown_timeout + 5)
        for frontend in frontends:
            if not frontend.exited.done():
                log.warning("frontend %d did not stop in time; killing it", frontend.slot)
                frontend.process.kill()
        if late:
            await asyncio.wait(late)
