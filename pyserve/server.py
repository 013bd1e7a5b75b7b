"""Runs pyserve in the foreground: engine, startup models, listeners, and an orderly stop.

The inference listener is served by this process, or with `frontend_processes` above 1 by
that many frontend processes (pyserve.supervisor); management and metrics always here. The
gRPC inference listener has a process of its own, the gRPC management listener is here.
SIGTERM or SIGINT stop the listeners from taking new connections, let in-flight requests
finish, then stop every worker.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from pathlib import Path
from urllib.parse import urlsplit
from typing import Callable

import uvloop

from pyserve import __version__
from pyserve.allocator import tune_allocator
from pyserve.config import Settings
from pyserve.control import listening_line
from pyserve.engine import Engine
from pyserve.frontend.inference import inference_app
from pyserve.frontend.listeners import (Listener, ListenerError, bind, bind_group, listener_tls,
                                       make_listener)
from pyserve.frontend.management import management_app
from pyserve.frontend.metrics import metrics_app
from pyserve.frontend.tokens import TokenKeys
from pyserve.grpc.listeners import GrpcListener
from pyserve.grpc.management import management_listener
from pyserve.logfiles import LogFiles
from pyserve.logs import configure_logging
from pyserve.startup import load_startup_models, ready_report, serving_line
from pyserve.supervisor import GRPC_FRONTEND, HTTP_FRONTEND, FrontendSupervisor, Slot

log = logging.getLogger("pyserve")

# frontend_processes=0 (auto), chosen by measurement (docs/architecture.md#frontend-processes):
# below MIN_CORES_FOR_FRONTENDS one process serves best (2 cores: 18.8k req/s echo@64 alone,
# 11.3k with 2 frontends); above, one frontend per 2 cores, at most 8 (16 cores, echo@256 with
# 2 workers: 17k with 1 process, 31k with 2 frontends, 58k with 4, 82k with 8).
MIN_CORES_FOR_FRONTENDS = 8
CORES_PER_FRONTEND = 2
MAX_AUTO_FRONTENDS = 8


def bound_url(settings: Settings, name: str, sock) -> str:
    """The listener's URL with the port it got (its address may say port 0)."""
    scheme = urlsplit(getattr(settings, f"{name}_address")).scheme or "http"
    host, port = sock.getsockname()[:2]
    return f"{scheme}://{host}:{port}"


def frontend_count(settings: Settings, cores: int | None = None) -> int:
    """`frontend_processes`, or when it is 0 (auto) 1 below MIN_CORES_FOR_FRONTENDS cores this
    process may run on and one per CORES_PER_FRONTEND cores above, at most MAX_AUTO_FRONTENDS."""
    if settings.frontend_processes > 0:
        return settings.frontend_processes
    cores = cores or len(os.sched_getaffinity(0)) or 1
    if cores < MIN_CORES_FOR_FRONTENDS:
        return 1
    return min(cores // CORES_PER_FRONTEND, MAX_AUTO_FRONTENDS)


async def serve(settings: Settings, on_ready: Callable[[str], None] | None = None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    engine = Engine(settings)
    await engine.start()
    log_files = LogFiles.open(settings, engine.metrics, engine.gpus)
    tokens = None if settings.disable_token_authorization else TokenKeys(Path.cwd(),
                                                                          settings.token_expiration_min)
    listeners: list[Listener] = []
    supervisor: FrontendSupervisor | None = None
    grpc_management: GrpcListener | None = None
    frontends = frontend_count(settings)
    slots: list[Slot] = []
    try:
        try:
            if frontends == 1:
                listeners.append(make_listener(inference_app(engine, settings, __version__, tokens),
                                               bind(settings.inference_address, "inference"),
                                               "inference", settings))
            else:
                # A TLS mistake stops the start here, not in each frontend.
                listener_tls(settings, "inference")
                slots = [Slot(HTTP_FRONTEND, sock) for sock in
                         bind_group(settings.inference_address, "inference", frontends)]
            slots.append(Slot(GRPC_FRONTEND))
            supervisor = FrontendSupervisor(engine, settings, __version__, slots, tokens)
            engine.on_change, engine.settle = supervisor.changed, supervisor.settle
            listeners.append(make_listener(management_app(engine, settings, __version__, tokens),
                                           bind(settings.management_address, "management"),
                                           "management", settings))
            if settings.enable_metrics_api:
                listeners.append(make_listener(metrics_app(engine.metrics, __version__,
                                                           supervisor.counters),
                                               bind(settings.metrics_address, "metrics"), "metrics",
                                               settings))
            grpc_management = management_listener(engine, settings, tokens)
        except ListenerError as error:
            log.error("%s", error)
            if on_ready:
                on_ready(f"error: {error}")
            return 1
        startup = await load_startup_models(engine, settings)
        try:  # once the models are loaded: until then connections wait, as with one process
            await supervisor.start()
        except (RuntimeError, OSError) as error:
            log.error("%s", error)
            if on_ready:
                on_ready(f"error: {error}")
            return 1
        await grpc_management.start()
        tasks = [asyncio.create_task(listener.run_until_stopped()) for listener in listeners]
        sockets = {listener.name: listener.socket for listener in listeners}
        if frontends > 1:
            sockets = {"inference": slots[0].listening, **sockets}
            log.info("inference is served by %d frontend processes", frontends)
        listening = listening_line({**{name: bound_url(settings, name, sock)
                                       for name, sock in sockets.items()},
                                    "grpc_inference": slots[-1].url,
                                    "grpc_management": grpc_management.url})
        log.info("%s", listening)
        log.info("%s", serving_line(startup.served))
        if tokens is not None:
            log.info("token authorization is on: keys in %s", tokens.path)
        if on_ready:
            on_ready(ready_report(listening, startup, tokens.path if tokens else None))
        # What startup made (modules, routes, the engine) lives as long as the server: moved
        # out of the collector's reach, full collections no longer walk it on every request
        # path that leaves cyclic garbage (KServe v2 at 64 connections: p99 30 -> 14 ms).
        gc.freeze()
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
        log.info("stopping: finishing in-flight requests")
        for listener in listeners:
            listener.should_exit = True
        stopping = asyncio.create_task(grpc_management.stop(settings.graceful_shutdown_timeout))
        await supervisor.stop()
        await asyncio.gather(*tasks, stopping, return_exceptions=True)
        stopped.cancel()
    finally:
        if supervisor is not None and not supervisor.closing:
            await supervisor.stop()
        if grpc_management is not None:
            await grpc_management.stop(None)
        await engine.close()
        for listener in listeners:
            listener.socket.close()
        for slot in slots:
            if slot.listening is not None:
                slot.listening.close()
        if tokens is not None:
            tokens.remove_file()
        await log_files.close()
        log.info("stopped")
    return 0


def run(settings: Settings, on_ready: Callable[[str], None] | None = None) -> int:
    configure_logging("server")
    tune_allocator()
    return uvloop.run(serve(settings, on_ready))
