"""Runs pyserve in the foreground: engine, startup models, listeners, and an orderly stop.

SIGTERM or SIGINT stop the listeners from taking new connections, let in-flight requests
finish, then stop every worker and remove every shared-memory segment.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Callable

import uvloop

from pyserve import __version__, archive
from pyserve.allocator import tune_allocator
from pyserve.config import Settings
from pyserve.engine import Engine
from pyserve.engine.loading import RegisterOptions
from pyserve.errors import ServeError
from pyserve.frontend.inference import inference_app
from pyserve.frontend.listeners import Listener, ListenerError, make_listener
from pyserve.frontend.management import management_app
from pyserve.frontend.metrics import metrics_app
from pyserve.frontend.tokens import TokenKeys

log = logging.getLogger("pyserve")

def startup_models(settings: Settings) -> list[tuple[str | None, str]]:
    """`--models` / load_models entries as (name or None, url); `all` means the whole store."""
    entries: list[tuple[str | None, str]] = []
    for entry in settings.load_models:
        if entry == "all":
            store = Path(settings.model_store or ".")
            for path in sorted(store.iterdir()):
                if not path.name.startswith(".") and (
                    path.is_dir() or path.name.endswith(archive.ARCHIVE_SUFFIXES)
                ):
                    entries.append((None, path.name))
        elif "=" in entry:
            name, url = entry.split("=", 1)
            entries.append((name, url))
        else:
            entries.append((None, entry))
    return entries


async def _load_startup_models(engine: Engine, settings: Settings) -> list[str]:
    problems = []
    for name, url in startup_models(settings):
        try:
            model = await engine.register(url, RegisterOptions(model_name=name),
                                          loaded_at_startup=True)
            log.info("model %s:%s is served from %s with %d workers", model.name, model.version,
                     url, len(model.live_workers()))
        except (ServeError, archive.ArchiveError) as error:
            message = getattr(error, "message", str(error))
            log.error("cannot load %s: %s", url, message)
            problems.append(f"{url}: {message}")
    return problems


async def serve(settings: Settings, on_ready: Callable[[str], None] | None = None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    engine = Engine(settings)
    await engine.start()
    tokens = None if settings.disable_token_authorization else TokenKeys(Path.cwd(),
                                                                          settings.token_expiration_min)
    listeners: list[Listener] = []
    drain = settings.graceful_shutdown_timeout
    try:
        try:
            listeners.append(make_listener(inference_app(engine, settings, __version__, tokens),
                                           settings.inference_address, "inference", drain))
            listeners.append(make_listener(management_app(engine, settings, __version__, tokens),
                                           settings.management_address, "management", drain))
            if settings.enable_metrics_api:
                listeners.append(make_listener(metrics_app(engine.metrics, __version__),
                                               settings.metrics_address, "metrics", drain))
        except ListenerError as error:
            log.error("%s", error)
            if on_ready:
                on_ready(f"error: {error}")
            return 1
        problems = await _load_startup_models(engine, settings)
        tasks = [asyncio.create_task(listener.run_until_stopped()) for listener in listeners]
        for listener in listeners:
            log.info("listening on %s:%s", *listener.socket.getsockname()[:2])
        if tokens is not None:
            log.info("token authorization is on: keys in %s", tokens.path)
        if on_ready:
            keys = f"\ntoken authorization is on: keys in {tokens.path}" if tokens else ""
            on_ready("ready" + keys + "".join(f"\nwarning: cannot load {p}" for p in problems))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
        log.info("stopping: finishing in-flight requests")
        for listener in listeners:
            listener.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        stopped.cancel()
    finally:
        await engine.close()
        for listener in listeners:
            listener.socket.close()
        if tokens is not None:
            tokens.remove_file()
        log.info("stopped")
    return 0


def run(settings: Settings, on_ready: Callable[[str], None] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s [server {os.getpid()}] %(levelname)s %(name)s: %(message)s",
    )
    tune_allocator()
    return uvloop.run(serve(settings, on_ready))
