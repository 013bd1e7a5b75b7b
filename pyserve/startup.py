"""The models a server loads at start (`--models`, load_models), and what it tells its starter.

As in TorchServe, a startup model that cannot be loaded is left out and the server serves
the others. pyserve also says why (for a handler that fails, its own error from the worker)
and which models it serves, in its log and in the ready report `pyserve start` prints.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from pyserve import archive
from pyserve.config import Settings
from pyserve.engine import Engine
from pyserve.engine.engine import WorkersDidNotLoad
from pyserve.engine.loading import RegisterOptions
from pyserve.engine.models import ModelVersion
from pyserve.errors import ServeError
from pyserve.logs import escape_control_characters

log = logging.getLogger("pyserve")


@dataclass
class Startup:
    """What loading the startup models came to."""

    served: list[ModelVersion] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # "URL: why", one line each


def startup_models(settings: Settings) -> list[tuple[str | None, str]]:
    """`--models` / load_models entries as (name or None, url); `all` (any case, as TorchServe
    reads it) means the whole store."""
    entries: list[tuple[str | None, str]] = []
    for entry in settings.load_models:
        if entry.lower() == "all":
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


def why_not_loaded(error: ServeError | archive.ArchiveError) -> str:
    message = getattr(error, "message", str(error))
    if isinstance(error, WorkersDidNotLoad) and error.cause:
        return f"{message}: {error.cause}"
    return message


async def load_startup_models(engine: Engine, settings: Settings) -> Startup:
    startup = Startup()
    for name, url in startup_models(settings):
        try:
            model = await engine.register(url, RegisterOptions(model_name=name),
                                          loaded_at_startup=True)
        except (ServeError, archive.ArchiveError) as error:
            why = why_not_loaded(error)
            log.error("cannot load %s: %s", url, why)
            startup.failures.append(escape_control_characters(f"{url}: {why}"))
            continue
        log.info("model %s:%s is served from %s with %d workers", model.name, model.version,
                 url, len(model.live_workers()))
        startup.served.append(model)
    return startup


def serving_line(models: list[ModelVersion]) -> str:
    """`serving: mnist 1.0 (4 workers), echo 1.0 (1 worker)`, or `serving: no models`."""
    def one(model: ModelVersion) -> str:
        workers = len(model.live_workers())
        return f"{model.name} {model.version} ({workers} worker{'' if workers == 1 else 's'})"

    served = ", ".join(one(model) for model in models) or "no models"
    return escape_control_characters(f"serving: {served}")


def ready_report(listening: str, startup: Startup, keys: Path | None) -> str:
    """The report a server sends its starter once ready: "ready", then one line each."""
    lines = ["ready", listening, serving_line(startup.served)]
    if keys is not None:
        lines.append(f"token authorization is on: keys in {keys}")
    lines += [f"warning: cannot load {failure}" for failure in startup.failures]
    return "\n".join(lines)
